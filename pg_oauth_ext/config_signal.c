/*-------------------------------------------------------------------------
 *
 * config_signal.c
 *	  The configuration version: a transaction that changes issuers,
 *	  role_map, revocations or keys moves it when it commits, and wakes the
 *	  validator workers.
 *
 * Workers and the decision cache compare the version to know that what they
 * hold is stale.  It moves only once the change is committed (an xact
 * callback), so a worker that sees the new number and then takes its
 * snapshot is sure to see the new rows; a change that cannot be followed
 * that way (two-phase commit) is refused.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "fmgr.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_config_version);
PG_FUNCTION_INFO_V1(pg_oauth_fn_config_changed);
PG_FUNCTION_INFO_V1(pg_oauth_fn_config_structure_version);

Datum
pg_oauth_fn_config_version(PG_FUNCTION_ARGS)
{
	if (pg_oauth_shared == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&pg_oauth_shared->config_version));
}

/*
 * The version moves only once the change is committed: a worker that sees the
 * new number and then takes its snapshot is sure to see the new rows.
 */
static bool config_change_pending = false;
static bool config_structure_pending = false;
static bool xact_callback_registered = false;

/*
 * The configuration moved: cached decisions and the workers' loaded
 * configuration are stale.  A commit here calls it; so does a standby's
 * housekeeper for what replay changed (standby_follow.c).
 */
void
pg_oauth_config_moved(void)
{
	pg_atomic_fetch_add_u64(&pg_oauth_shared->config_version, 1);
	pg_oauth_wake_all_workers();
}

static void
config_xact_callback(XactEvent event, void *arg)
{
	if (!config_change_pending)
		return;
	/*
	 * COMMIT PREPARED runs in another session, where nothing would move the
	 * version: the cache and the workers would keep the old configuration.
	 */
	if (event == XACT_EVENT_PRE_PREPARE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("pg_oauth configuration changes cannot be prepared for two-phase commit"),
				 errhint("Change issuers, role_map or revocations in an ordinary transaction.")));
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		bool		structure = config_structure_pending;

		config_change_pending = config_structure_pending = false;
		if (pg_oauth_shared != NULL)
		{
			/* first: a worker that sees the new version sees this too */
			if (structure)
				pg_atomic_fetch_add_u64(&pg_oauth_shared->config_structure, 1);
			pg_oauth_config_moved();
		}
		/* after the version moved: see pg_oauth_fn_end_sessions */
		session_registry_end_pending(true);
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		config_change_pending = config_structure_pending = false;
		session_registry_end_pending(false);
	}
}

/* This transaction changed the configuration: move the version at commit. */
void
pg_oauth_note_config_change(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(config_xact_callback, NULL);
		xact_callback_registered = true;
	}
	config_change_pending = true;
}

/*
 * This transaction changed what the configuration triggers may not have seen
 * (a statement config_guard.c noted: DDL, COPY, TRUNCATE, drops): workers must
 * not trust the triggers' counters for it and read everything again.
 */
void
pg_oauth_note_config_structure_change(void)
{
	pg_oauth_note_config_change();
	config_structure_pending = true;
}

Datum
pg_oauth_fn_config_structure_version(PG_FUNCTION_ARGS)
{
	if (pg_oauth_shared == NULL)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) pg_atomic_read_u64(&pg_oauth_shared->config_structure));
}

Datum
pg_oauth_fn_config_changed(PG_FUNCTION_ARGS)
{
	pg_oauth_note_config_change();
	PG_RETURN_VOID();
}
