/*-------------------------------------------------------------------------
 *
 * housekeeper.c
 *	  One background worker that does the work nobody should wait for:
 *	  ending token sessions whose token expired, writing audit records into
 *	  oauth.audit_log, trimming that table to pg_oauth.audit_retention, and
 *	  offboarding provisioned roles not seen for a while (oauth.offboard()).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#define HOUSEKEEPER_TICK_MS		500
#define AUDIT_BATCH				64
#define EXTENSION_RECHECK_MS	10000
#define RETENTION_EVERY_MS		(10 * 60 * 1000)
/*
 * Retention deletes this many rows per transaction, oldest first by the
 * index on at, and comes back after a short pause (audit rows are written
 * and expired sessions ended in between): no long transaction holds back
 * vacuum or the audit ring, however many rows are due.
 */
#define RETENTION_BATCH_ROWS	10000
#define RETENTION_PAUSE_MS		20
/* oauth.offboard(): every minute, and soon after any configuration change */
#define OFFBOARD_EVERY_MS		(60 * 1000)

static SPIPlanPtr insert_plan = NULL;
static bool insert_plan_has_kind = false;	/* oauth.audit_log has "kind" (1.1) */
static SPIPlanPtr retention_plan = NULL;
static MemoryContext tick_context = NULL;

/* A retention pass under way: it deletes rows older than cutoff, batch by batch. */
typedef struct RetentionPass
{
	bool		active;
	TimestampTz cutoff;
	TimestampTz started;
	int64		deleted;
	int			batches;
} RetentionPass;

static RetentionPass retention = {false};

void
pg_oauth_register_housekeeper(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_oauth");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "pg_oauth_housekeeper_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_oauth housekeeper");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_oauth housekeeper");
	RegisterBackgroundWorker(&worker);
}

/*
 * Run one SPI step in its own transaction; errors are logged, not raised.
 * The same error of the same step, every tick, is logged once.
 */
static bool
housekeeper_transaction(void (*step) (void *), void *arg, const char *what)
{
	static char last_error[256] = "";
	char		error[256];
	ErrorData  *edata;

	pgstat_report_activity(STATE_RUNNING, what);
	edata = spi_run_in_transaction(step, arg, tick_context);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (edata == NULL)
	{
		last_error[0] = '\0';
		return true;
	}
	snprintf(error, sizeof(error), "%s: %s", what, edata->message);
	if (strcmp(error, last_error) != 0)
		ereport(LOG, (errmsg("pg_oauth housekeeper: %s failed: %s", what, edata->message)));
	strlcpy(last_error, error, sizeof(last_error));
	insert_plan = NULL;			/* the extension may have been dropped */
	retention_plan = NULL;
	return false;
}

static void
extension_step(void *arg)
{
	bool	   *installed = (bool *) arg;

	*installed = pg_oauth_extension_present();
}

typedef struct AuditBatch
{
	AuditRecord *records;
	int			n;
} AuditBatch;

static Datum
text_or_null(const char *s, char *isnull)
{
	bool		none = (s == NULL || s[0] == '\0');

	*isnull = none ? 'n' : ' ';
	return none ? (Datum) 0 : CStringGetTextDatum(s);
}

static void
audit_insert_step(void *arg)
{
	AuditBatch *batch = (AuditBatch *) arg;
	int			i;

	/*
	 * 1.1 added the column "kind"; a server restarted with this library runs
	 * the 1.0 tables until ALTER EXTENSION pg_oauth UPDATE: write what fits.
	 */
	{
		Oid			nsp = get_namespace_oid("oauth", true);
		Oid			rel = OidIsValid(nsp) ? get_relname_relid("audit_log", nsp) : InvalidOid;
		bool		has_kind = OidIsValid(rel) && get_attnum(rel, "kind") != InvalidAttrNumber;

		if (insert_plan != NULL && has_kind != insert_plan_has_kind)
		{
			SPI_freeplan(insert_plan);
			insert_plan = NULL;
		}
		insert_plan_has_kind = has_kind;
	}
	if (insert_plan == NULL)
	{
		Oid			types[15] = {TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
			TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INETOID, BOOLOID, FLOAT8OID, FLOAT8OID,
		TEXTOID};
		SPIPlanPtr	plan = SPI_prepare(insert_plan_has_kind ?
									   "INSERT INTO oauth.audit_log (at, outcome, reason, issuer, subject, token_id, "
									   "kid, alg, role, database, client_addr, ssl, elapsed_ms, queue_ms, kind) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)" :
									   "INSERT INTO oauth.audit_log (at, outcome, reason, issuer, subject, token_id, "
									   "kid, alg, role, database, client_addr, ssl, elapsed_ms, queue_ms) "
									   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
									   insert_plan_has_kind ? 15 : 14, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the audit insert: %s",
				 SPI_result_code_string(SPI_result));
		insert_plan = plan;
	}

	for (i = 0; i < batch->n; i++)
	{
		AuditRecord *r = &batch->records[i];
		Datum		v[15];
		char		n[15];

		memset(n, ' ', sizeof(n));
		v[0] = TimestampTzGetDatum(r->at);
		v[1] = CStringGetTextDatum(r->ok ? "ok" : "refused");
		v[2] = CStringGetTextDatum(r->reason);
		v[3] = text_or_null(r->issuer, &n[3]);
		v[4] = text_or_null(r->subject, &n[4]);
		v[5] = text_or_null(r->token_id, &n[5]);
		v[6] = text_or_null(r->kid, &n[6]);
		v[7] = text_or_null(r->alg, &n[7]);
		v[8] = text_or_null(r->role, &n[8]);
		v[9] = text_or_null(r->database, &n[9]);
		if (r->client_addr[0] != '\0')
			v[10] = DirectFunctionCall1(inet_in, CStringGetDatum(r->client_addr));
		else
		{
			v[10] = (Datum) 0;
			n[10] = 'n';
		}
		v[11] = BoolGetDatum(r->ssl);
		v[12] = Float8GetDatum(r->elapsed_us / 1000.0);
		if (r->queue_us >= 0)
			v[13] = Float8GetDatum(r->queue_us / 1000.0);
		else
		{
			v[13] = (Datum) 0;
			n[13] = 'n';
		}
		v[14] = CStringGetTextDatum(r->per_transaction ? "transaction" : "login");
		if (SPI_execute_plan(insert_plan, v, n, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "audit insert failed");
	}
}

static void
retention_step(void *arg)
{
	int64	   *deleted = (int64 *) arg;
	Datum		values[1];

	if (retention_plan == NULL)
	{
		Oid			types[1] = {TIMESTAMPTZOID};
		SPIPlanPtr	plan = SPI_prepare(
									   "DELETE FROM oauth.audit_log WHERE ctid OPERATOR(pg_catalog.=) ANY (ARRAY("
									   "SELECT ctid FROM oauth.audit_log WHERE at OPERATOR(pg_catalog.<) $1 "
									   "ORDER BY at LIMIT " CppAsString2(RETENTION_BATCH_ROWS) "))",
									   1, types);

		if (plan == NULL || SPI_keepplan(plan) != 0)
			elog(ERROR, "could not prepare the audit retention delete: %s",
				 SPI_result_code_string(SPI_result));
		retention_plan = plan;
	}
	values[0] = TimestampTzGetDatum(retention.cutoff);
	if (SPI_execute_plan(retention_plan, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "audit retention delete failed");
	*deleted = (int64) SPI_processed;
}

/* oauth.offboard(), when this database's extension has it (1.1 on) */
static void
offboard_step(void *arg)
{
	if (SPI_execute("SELECT 1 FROM pg_catalog.pg_proc WHERE oid OPERATOR(pg_catalog.=) "
					"pg_catalog.to_regprocedure('oauth.offboard()')", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for oauth.offboard()");
	if (SPI_processed == 0)
		return;
	if (SPI_execute("SELECT pg_catalog.count(*) FROM oauth.offboard()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "oauth.offboard() failed");
}

/* One batch of the retention pass; the pass ends with a batch that was not full. */
static void
retention_batch(void)
{
	int64		deleted = 0;

	if (!housekeeper_transaction(retention_step, &deleted, "pg_oauth: trimming audit log"))
	{
		retention.active = false;
		return;
	}
	retention.deleted += deleted;
	retention.batches++;
	if (deleted >= RETENTION_BATCH_ROWS)
		return;
	retention.active = false;
	/* a large purge is worth a line; the routine pass every 10 minutes is not */
	ereport(retention.batches > 1 ? LOG : DEBUG1,
			(errmsg("pg_oauth: audit retention deleted %lld rows older than %s from oauth.audit_log in %d transactions, %.1f s",
					(long long) retention.deleted, timestamptz_to_str(retention.cutoff),
					retention.batches,
					(double) (GetCurrentTimestamp() - retention.started) / USECS_PER_SEC)));
}

void
pg_oauth_housekeeper_main(Datum main_arg)
{
	bool		installed = false;
	uint64		dropped_reported = 0;
	bool		identities_reported = false;
	TimestampTz last_check = 0;
	TimestampTz last_retention = 0;
	TimestampTz last_offboard = 0;
	uint64		offboarded_at_version = 0;
	bool		was_standby = false;
	AuditRecord *records;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * Regardless of datallowconn: the database's owner (maybe not a
	 * superuser) must not stop every token login with ALLOW_CONNECTIONS false.
	 */
	BackgroundWorkerInitializeConnection(pg_oauth_database, NULL, BGWORKER_BYPASS_ALLOWCONN);
	/* started during recovery: a promotion later is this process's to announce */
	was_standby = RecoveryInProgress();
	pg_oauth_pin_worker_settings(true);
	pgstat_report_appname("pg_oauth housekeeper");

	tick_context = AllocSetContextCreate(TopMemoryContext, "pg_oauth housekeeper",
										 ALLOCSET_DEFAULT_SIZES);
	records = MemoryContextAlloc(TopMemoryContext, sizeof(AuditRecord) * AUDIT_BATCH);

	for (;;)
	{
		TimestampTz now;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 retention.active ? RETENTION_PAUSE_MS : HOUSEKEEPER_TICK_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			last_retention = 0; /* a new retention applies now, not in 10 min */
			retention.active = false;	/* with its own cutoff */
		}
		MemoryContextReset(tick_context);
		MemoryContextSwitchTo(tick_context);

		/* Shared memory only: works on a standby and without the extension. */
		session_registry_end_expired(pg_oauth_session_expiry, pg_oauth_session_expiry_grace);

		/* the ring overwrote records before we could write them: say so once */
		if (audit_log_dropped() > dropped_reported)
		{
			ereport(WARNING,
					(errmsg("pg_oauth: %llu audit records were not written to oauth.audit_log (more logins than the audit ring holds between two housekeeper runs); their log lines exist",
							(unsigned long long) (audit_log_dropped() - dropped_reported))));
			dropped_reported = audit_log_dropped();
		}

		/* identity texts that found no room: said once (more room needs a restart) */
		if (!identities_reported)
		{
			char		why[128];
			uint64		not_kept = identity_store_not_kept(why, sizeof(why));

			if (not_kept > 0)
			{
				ereport(WARNING,
						(errmsg("pg_oauth: %llu token identities could not be kept as text in shared memory",
								(unsigned long long) not_kept),
						 errdetail("%s. They are still matched whole (by their SHA-256) for session limits and revocation, but show as NULL in oauth.sessions, oauth.audit_log and oauth.stats; the audit log lines have them.",
								   why[0] ? why : "no room"),
						 errhint("Raise pg_oauth.identity_memory (a restart is needed).")));
				identities_reported = true;
			}
		}

		/*
		 * A standby queues no audit records (audit_log_record checks); it
		 * follows what replay changes in the configuration instead.
		 */
		if (RecoveryInProgress())
		{
			bool		follows = false;

			was_standby = true;
			(void) housekeeper_transaction(standby_follow_step, &follows,
										   "pg_oauth: following the primary's configuration");
			continue;
		}
		if (was_standby)
		{
			was_standby = false;
			standby_follow_promoted();
		}

		/*
		 * Until CREATE EXTENSION there is no table: records wait in the ring
		 * (which overwrites its oldest when full), and we look again soon.
		 */
		now = GetCurrentTimestamp();
		if (!installed &&
			TimestampDifferenceExceeds(last_check, now,
									   audit_log_pending() > 0 ? HOUSEKEEPER_TICK_MS : EXTENSION_RECHECK_MS))
		{
			last_check = now;
			if (!housekeeper_transaction(extension_step, &installed, "pg_oauth: checking extension"))
				installed = false;
		}
		if (!installed)
		{
			retention.active = false;	/* no fast ticks for a table not there */
			continue;
		}

		for (;;)
		{
			AuditBatch	batch;

			batch.records = records;
			batch.n = audit_log_take(records, AUDIT_BATCH);
			if (batch.n == 0)
				break;
			/* a failed batch is lost from the table; its log lines remain */
			if (!housekeeper_transaction(audit_insert_step, &batch, "pg_oauth: writing audit log"))
			{
				installed = false;
				break;
			}
			CHECK_FOR_INTERRUPTS();
		}

		if (installed && pg_oauth_audit_retention > 0 && !retention.active &&
			TimestampDifferenceExceeds(last_retention, now, RETENTION_EVERY_MS))
		{
			last_retention = now;
			retention.active = true;
			retention.cutoff = now - (TimestampTz) pg_oauth_audit_retention * USECS_PER_MINUTE;
			retention.started = now;
			retention.deleted = 0;
			retention.batches = 0;
		}
		if (installed && retention.active)
			retention_batch();

		if (installed)
		{
			uint64		config_version,
						key_epoch;

			decision_cache_versions(&config_version, &key_epoch);
			if (config_version != offboarded_at_version ||
				TimestampDifferenceExceeds(last_offboard, now, OFFBOARD_EVERY_MS))
			{
				last_offboard = now;
				offboarded_at_version = config_version;
				(void) housekeeper_transaction(offboard_step, NULL,
											   "pg_oauth: offboarding provisioned roles");
			}
		}
	}
}
