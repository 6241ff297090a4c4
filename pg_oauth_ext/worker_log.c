/*-------------------------------------------------------------------------
 *
 * worker_log.c
 *	  Server-log messages of the validator's Python code (pyhook), written
 *	  from C so that they read like the workers' own.
 *
 * plpy.log/plpy.warning carry the PL/Python and SPI error context: every
 * message of a worker would come with CONTEXT lines naming oauth.warmup()
 * or oauth.validate().  These functions hide that context from the server
 * log (errhidecontext; a client still gets it), and keep a configuration
 * change to one LOG line however many workers load it.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_log);
PG_FUNCTION_INFO_V1(pg_oauth_fn_log_config_applied);

static int
level_by_name(const char *name)
{
	if (strcmp(name, "debug1") == 0)
		return DEBUG1;
	if (strcmp(name, "log") == 0)
		return LOG;
	if (strcmp(name, "warning") == 0)
		return WARNING;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown message level \"%s\"", name),
			 errhint("Use debug1, log or warning.")));
	return LOG;					/* keep the compiler quiet */
}

/* oauth._log(level, message): one line, no CONTEXT in the server log. */
Datum
pg_oauth_fn_log(PG_FUNCTION_ARGS)
{
	int			level = level_by_name(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	char	   *message = text_to_cstring(PG_GETARG_TEXT_PP(1));

	ereport(level, (errmsg_internal("%s", message), errhidecontext(true)));
	PG_RETURN_VOID();
}

/*
 * oauth._log_config_applied(table_id, version, message): a worker loaded
 * configuration version `version` of config_state table `table_id`.  The
 * first worker to report a version newer than the last one logged writes a
 * LOG line; the others (and older versions) write DEBUG1.  A new table (the
 * extension was created again) starts its versions over.  Returns whether
 * this call wrote the LOG line.
 */
Datum
pg_oauth_fn_log_config_applied(PG_FUNCTION_ARGS)
{
	uint64		table_id = (uint64) PG_GETARG_INT64(0);
	uint64		version = (uint64) PG_GETARG_INT64(1);
	char	   *message = text_to_cstring(PG_GETARG_TEXT_PP(2));
	bool		first = true;

	if (pg_oauth_shared != NULL)
	{
		LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
		first = (table_id != pg_oauth_shared->config_logged_table ||
				 version > pg_oauth_shared->config_logged_version);
		if (first)
		{
			pg_oauth_shared->config_logged_table = table_id;
			pg_oauth_shared->config_logged_version = version;
		}
		LWLockRelease(pg_oauth_shared->lock);
	}
	ereport(first ? LOG : DEBUG1, (errmsg_internal("%s", message), errhidecontext(true)));
	PG_RETURN_BOOL(first);
}
