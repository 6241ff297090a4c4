/*-------------------------------------------------------------------------
 *
 * worker_settings.c
 *	  The settings pg_oauth's background workers pin for themselves.
 *
 * The validator workers and the housekeeper run as the bootstrap superuser,
 * connected to pg_oauth.database, whose owner need not be a superuser.
 * InitPostgres applies that database's settings (ALTER DATABASE ... SET) to
 * background workers too, so its owner could choose their search_path (and
 * have its own now() run as superuser), fold the token into custom plans that
 * debug_print_plan or auto_explain print, make their transactions read-only,
 * and so on.  Right after connecting, each worker sets these values at
 * PGC_S_SESSION, which outranks every database, role and file setting, also
 * after a reload.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"

typedef struct PinnedSetting
{
	const char *name;
	const char *value;
} PinnedSetting;

static const PinnedSetting pinned_settings[] = {
	/*
	 * who they are: the bootstrap superuser, whatever role or session
	 * authorization the database names (NULL: that superuser's name)
	 */
	{"session_authorization", NULL},
	{"role", "none"},
	/* every name the workers' SQL leaves unqualified resolves in pg_catalog */
	{"search_path", "pg_catalog, pg_temp"},
	/* the token, a bind parameter of a kept plan, is never a plan constant */
	{"plan_cache_mode", "force_generic_plan"},
	/* they write (audit rows, jwks_cache) and must not fail, wait or exit on a whim */
	{"default_transaction_read_only", "off"},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_deferrable", "off"},
	{"statement_timeout", "0"},
	{"lock_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"exit_on_error", "off"},
	{"jit", "off"},
	/* how SQL text and values are read and shown */
	{"standard_conforming_strings", "on"},
	{"transform_null_equals", "off"},
	{"array_nulls", "on"},
	{"DateStyle", "ISO, MDY"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"row_security", "on"},
	/*
	 * auto_explain, where it is preloaded, never explains the workers' SQL:
	 * from 16 on it prints the bind parameters ("Query Parameters: $1 =
	 * '<the token>'"); where it is not loaded, this is a harmless placeholder
	 */
	{"auto_explain.log_min_duration", "-1"},
	/* nor does pgaudit, where it is loaded, log their parameters */
	{"pgaudit.log_parameter", "off"},
};

#define NUM_PINNED_SETTINGS lengthof(pinned_settings)

/* Which pinned settings the database or the workers' role sets itself. */
static void
find_overridden_step(void *arg)
{
	bool	   *found = (bool *) arg;
	char		query[512];
	uint64		row;

	snprintf(query, sizeof(query),
			 "SELECT pg_catalog.split_part(s.setting, '=', 1) "
			 "FROM pg_catalog.pg_db_role_setting d, "
			 "pg_catalog.unnest(d.setconfig) AS s(setting) "
			 "WHERE d.setdatabase IN (0, %u) AND d.setrole IN (0, %u)",
			 MyDatabaseId, GetUserId());
	if (SPI_execute(query, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_db_role_setting");
	for (row = 0; row < SPI_processed; row++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, 1);
		int			i;

		for (i = 0; name != NULL && i < NUM_PINNED_SETTINGS; i++)
			if (pg_strcasecmp(name, pinned_settings[i].name) == 0)
				found[i] = true;
	}
}

/* One LOG line naming the database or role settings the pins override. */
static void
report_overridden(void)
{
	bool		found[NUM_PINNED_SETTINGS] = {false};
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext context;
	ErrorData  *edata;
	StringInfoData names;
	int			i;

	context = AllocSetContextCreate(TopMemoryContext, "pg_oauth worker settings",
									ALLOCSET_SMALL_SIZES);
	edata = spi_run_in_transaction(find_overridden_step, found, context);
	if (edata != NULL)
		ereport(DEBUG1,
				(errmsg("pg_oauth: could not read pg_db_role_setting: %s", edata->message)));
	else
	{
		initStringInfo(&names);
		for (i = 0; i < NUM_PINNED_SETTINGS; i++)
			if (found[i])
				appendStringInfo(&names, "%s%s", names.len > 0 ? ", " : "",
								 pinned_settings[i].name);
		if (names.len > 0)
			ereport(LOG,
					(errmsg("pg_oauth: the background workers ignore these settings of database \"%s\" or of their role: %s",
							pg_oauth_database, names.data)));
	}
	MemoryContextSwitchTo(caller);
	MemoryContextDelete(context);
}

/*
 * Called by every pg_oauth background worker right after
 * BackgroundWorkerInitializeConnection.  report_overrides: log which
 * database or role settings are overridden (one worker says it).
 */
void
pg_oauth_pin_worker_settings(bool report_overrides)
{
	int			i;

	/* role names are looked up in the catalogs: inside a transaction */
	StartTransactionCommand();
	for (i = 0; i < NUM_PINNED_SETTINGS; i++)
		SetConfigOption(pinned_settings[i].name,
						pinned_settings[i].value ? pinned_settings[i].value :
						GetUserNameFromId(BOOTSTRAP_SUPERUSERID, false),
						PGC_SUSET, PGC_S_SESSION);
	if (!superuser() || GetUserId() != BOOTSTRAP_SUPERUSERID)
		ereport(FATAL,
				(errmsg("pg_oauth: a background worker is not running as the bootstrap superuser")));
	CommitTransactionCommand();
	if (report_overrides)
		report_overridden();
}

/*
 * Inside an SPI step: is the extension installed in this database, and may a
 * superuser call into its schema?  The workers call oauth.* by name as the
 * bootstrap superuser, so the schema must be the extension's own, named
 * oauth, owned by a superuser, and nobody else may create objects in it
 * (its owner or a CREATE grantee could put functions there; a database owner
 * can pre-create a schema "oauth" that CREATE EXTENSION would then use).
 * False when the extension is not installed; ERROR when it is not safe.
 */
bool
pg_oauth_extension_present(void)
{
	bool		isnull;
	Datum		safe;

	if (SPI_execute("SELECT n.nspname OPERATOR(pg_catalog.=) 'oauth' AND a.rolsuper "
					"AND NOT EXISTS (SELECT 1 FROM pg_catalog.aclexplode(n.nspacl) AS x "
					"LEFT JOIN pg_catalog.pg_authid AS g ON g.oid OPERATOR(pg_catalog.=) x.grantee "
					"WHERE x.privilege_type OPERATOR(pg_catalog.=) 'CREATE' "
					"AND NOT coalesce(g.rolsuper, false)) "
					"FROM pg_catalog.pg_extension AS e "
					"JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace "
					"JOIN pg_catalog.pg_authid AS a ON a.oid OPERATOR(pg_catalog.=) n.nspowner "
					"WHERE e.extname OPERATOR(pg_catalog.=) 'pg_oauth'",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the pg_oauth extension");
	if (SPI_processed == 0)
		return false;
	safe = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull || !DatumGetBool(safe))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"oauth\" of extension pg_oauth is not owned by a superuser, or others may create objects in it: pg_oauth will not call into it"),
				 errhint("DROP EXTENSION pg_oauth, DROP SCHEMA oauth, and CREATE EXTENSION pg_oauth again as a superuser.")));
	return true;
}
