/*-------------------------------------------------------------------------
 *
 * validator_worker.c
 *	  Background workers that run oauth.validate() for queued tokens.
 *
 * Each worker is connected to pg_oauth.database, keeps a prepared plan for
 * oauth.validate, and runs one transaction per request.  Every SPI call is
 * wrapped so that an error (a Python exception included) becomes a refusal
 * with reason validator_error instead of killing the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Idle workers refresh keys (through oauth.warmup) this often ... */
#define WORKER_IDLE_REFRESH_MS	5000
/*
 * ... and busy ones between two requests, after answering, at least this
 * often: keys are refreshed here, never while a login waits.
 */
#define WORKER_BUSY_REFRESH_MS	1000
/* A worker that is not ready re-checks this often. */
#define WORKER_RETRY_MS			1000
/*
 * A worker behind a configuration change tries to load it (through
 * oauth.warmup) at most this often while idle: at once when woken by the
 * change, again while another worker holds the refresh.
 */
#define WORKER_CATCH_UP_RETRY_MS	100

static int	worker_index = -1;
/* the shared configuration counter this worker's pyhook last loaded (0: none) */
static uint64 loaded_config_version = 0;
static bool worker_ready = false;
/* the last oauth.refresh_keys() generation this worker has carried out */
static uint64 keys_seen = 0;
static SPIPlanPtr validate_plan = NULL;
static MemoryContext request_context = NULL;
static char last_logged_error[PG_OAUTH_WORKER_ERROR_LEN];
/* "waiting for CREATE EXTENSION" was logged and not yet followed by "ready" */
static bool waiting_logged = false;

void
pg_oauth_register_workers(void)
{
	BackgroundWorker worker;
	int			i;

	for (i = 0; i < pg_oauth_workers; i++)
	{
		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		/* ConsistentState: workers also run on a hot standby. */
		worker.bgw_start_time = BgWorkerStart_ConsistentState;
		/* Come back after a crash or termination; never-restart workers vanish. */
		worker.bgw_restart_time = 1;
		snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_oauth");
		snprintf(worker.bgw_function_name, BGW_MAXLEN, "pg_oauth_worker_main");
		snprintf(worker.bgw_name, BGW_MAXLEN, "pg_oauth validator %d", i);
		snprintf(worker.bgw_type, BGW_MAXLEN, "pg_oauth validator");
		worker.bgw_main_arg = Int32GetDatum(i);
		RegisterBackgroundWorker(&worker);
	}
}

void
pg_oauth_wake_all_workers(void)
{
	PGPROC	   *procs[PG_OAUTH_MAX_WORKERS];
	int			n = 0;
	int			i;

	if (pg_oauth_shared == NULL)
		return;
	LWLockAcquire(pg_oauth_shared->lock, LW_SHARED);
	for (i = 0; i < pg_oauth_shared->nworkers; i++)
		if (pg_oauth_shared->workers[i].proc != NULL)
			procs[n++] = pg_oauth_shared->workers[i].proc;
	LWLockRelease(pg_oauth_shared->lock);
	for (i = 0; i < n; i++)
		SetLatch(&procs[i]->procLatch);
}

static uint64
shared_config_version(void)
{
	return pg_atomic_read_u64(&pg_oauth_shared->config_version);
}

/* A committed configuration change this worker has not loaded, and time to try. */
static bool
config_catch_up_due(TimestampTz last_attempt)
{
	return shared_config_version() != loaded_config_version &&
		TimestampDifferenceExceeds(last_attempt, GetCurrentTimestamp(),
								   WORKER_CATCH_UP_RETRY_MS);
}

static void
worker_exit_callback(int code, Datum arg)
{
	token_queue_worker_exit(DatumGetInt32(arg));
}

/* ---- becoming ready ---- */

typedef struct ReadyCheck
{
	bool		installed;
	char	   *summary;
} ReadyCheck;

static void
ready_step(void *arg)
{
	ReadyCheck *rc = (ReadyCheck *) arg;
	SPIPlanPtr	plan;

	rc->installed = pg_oauth_extension_present();
	if (!rc->installed)
		return;

	/* Import pyhook, load configuration and keys before the first login. */
	if (SPI_execute("SELECT oauth.warmup()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "oauth.warmup() failed");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			rc->summary = MemoryContextStrdup(request_context, TextDatumGetCString(d));
	}

	if (validate_plan == NULL)
	{
		Oid			argtypes[6] = {TEXTOID, TEXTOID, TEXTOID, INETOID, BOOLOID, INT8OID};

		plan = SPI_prepare("SELECT ok, reason, detail, allowed_roles, issuer, subject, "
						   "token_id, expires_at, claims::pg_catalog.text, kid, alg, key_cache, max_sessions "
						   "FROM oauth.validate($1, $2, $3, $4, $5, $6)",
						   6, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare oauth.validate: %s",
				 SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "could not keep the oauth.validate plan");
		validate_plan = plan;
	}
}

static bool
try_become_ready(void)
{
	ReadyCheck	rc = {false, NULL};
	ErrorData  *edata;
	char		msg[PG_OAUTH_WORKER_ERROR_LEN];
	uint64		config_version = shared_config_version();

	MemoryContextReset(request_context);
	pgstat_report_activity(STATE_RUNNING, "pg_oauth: loading validator");
	edata = spi_run_in_transaction(ready_step, &rc, request_context);
	pgstat_report_activity(STATE_IDLE, NULL);

	if (edata)
	{
		pg_oauth_strlcpy_text(msg, psprintf("validator warm-up failed: %s", edata->message),
							  sizeof(msg));
		/* Retried every second: log a failure once, not every time. */
		if (strcmp(msg, last_logged_error) != 0)
			ereport(LOG, (errmsg("pg_oauth: %s", msg)));
		pg_oauth_strlcpy_text(last_logged_error, msg, sizeof(last_logged_error));
		waiting_logged = false;
		token_queue_set_worker_state(worker_index, WORKER_NOT_READY, msg);
		return false;
	}
	if (!rc.installed)
	{
		snprintf(msg, sizeof(msg),
				 PG_OAUTH_EXTENSION_MISSING " \"%s\" (pg_oauth.database)",
				 pg_oauth_database);
		/* The DBA's next step, once per wait (the check repeats every second). */
		if (!waiting_logged)
			ereport(LOG,
					(errmsg("pg_oauth validator %d waiting: %s; run CREATE EXTENSION pg_oauth CASCADE there",
							worker_index, msg)));
		waiting_logged = true;
		last_logged_error[0] = '\0';
		token_queue_set_worker_state(worker_index, WORKER_NOT_READY, msg);
		return false;
	}
	last_logged_error[0] = '\0';
	if (waiting_logged)
		ereport(LOG,
				(errmsg("pg_oauth validator %d ready: extension pg_oauth found in database \"%s\"",
						worker_index, pg_oauth_database)));
	waiting_logged = false;
	loaded_config_version = config_version;
	ereport(DEBUG1, (errmsg("pg_oauth validator %d ready: %s", worker_index,
							rc.summary ? rc.summary : "")));
	token_queue_set_worker_state(worker_index, WORKER_IDLE, NULL);
	return true;
}

/* ---- one request ---- */

typedef struct ValidateCall
{
	TokenSlot  *slot;
	Datum		values[6];
	char		nulls[6];
} ValidateCall;

/* Append a string to the slot's data area; false when it does not fit. */
static bool
put_string(TokenSlot *slot, int *used, const char *s, int *offset)
{
	size_t		len = strlen(s) + 1;

	if (*used + len > PG_OAUTH_SLOT_DATA_SIZE)
		return false;
	memcpy(slot->data + *used, s, len);
	*offset = *used;
	*used += len;
	return true;
}

static char *
text_column(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

static void
validate_step(void *arg)
{
	ValidateCall *call = (ValidateCall *) arg;
	TokenSlot  *slot = call->slot;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	char	   *s;
	int			used = 0;
	int			off = -1;
	bool		fits = true;

	TRACE_SLOT(slot, TRACE_W_CALL);
	if (SPI_execute_plan(validate_plan, call->values, call->nulls, false, 2) != SPI_OK_SELECT)
		elog(ERROR, "oauth.validate did not return rows");
	if (SPI_processed != 1)
		elog(ERROR, "oauth.validate returned %llu rows instead of one",
			 (unsigned long long) SPI_processed);

	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	d = SPI_getbinval(tup, desc, 1, &isnull);
	slot->ok = !isnull && DatumGetBool(d);
	s = text_column(tup, desc, 2);
	pg_oauth_strlcpy_text(slot->reason, s ? s : (slot->ok ? "ok" : "validator_error"), sizeof(slot->reason));
	s = text_column(tup, desc, 3);
	pg_oauth_strlcpy_text(slot->detail, s ? s : "", sizeof(slot->detail));

	slot->n_roles = 0;
	slot->off_roles = -1;
	d = SPI_getbinval(tup, desc, 4, &isnull);
	if (!isnull)
	{
		ArrayType  *arr = DatumGetArrayTypeP(d);
		Datum	   *elems;
		bool	   *enulls;
		int			n,
					i;

		deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
		for (i = 0; i < n && fits; i++)
		{
			if (enulls[i])
				continue;
			fits = put_string(slot, &used, TextDatumGetCString(elems[i]), &off);
			if (slot->n_roles++ == 0)
				slot->off_roles = off;
		}
	}

	slot->off_issuer = slot->off_subject = slot->off_token_id = slot->off_claims = -1;
	if (fits && (s = text_column(tup, desc, 5)) != NULL)
		fits = put_string(slot, &used, s, &slot->off_issuer);
	if (fits && (s = text_column(tup, desc, 6)) != NULL)
		fits = put_string(slot, &used, s, &slot->off_subject);
	if (fits && (s = text_column(tup, desc, 7)) != NULL)
		fits = put_string(slot, &used, s, &slot->off_token_id);

	d = SPI_getbinval(tup, desc, 8, &isnull);
	slot->has_expires_at = !isnull;
	slot->expires_at = isnull ? 0 : DatumGetTimestampTz(d);

	if (fits && (s = text_column(tup, desc, 9)) != NULL)
		fits = put_string(slot, &used, s, &slot->off_claims);

	s = text_column(tup, desc, 10);
	pg_oauth_strlcpy_text(slot->kid, s ? s : "", sizeof(slot->kid));
	s = text_column(tup, desc, 11);
	pg_oauth_strlcpy_text(slot->alg, s ? s : "", sizeof(slot->alg));
	s = text_column(tup, desc, 12);
	slot->key_cache_hit = s == NULL ? -1 : (strcmp(s, "hit") == 0 ? 1 : 0);
	d = SPI_getbinval(tup, desc, 13, &isnull);
	slot->max_sessions = isnull ? -1 : DatumGetInt32(d);

	TRACE_SLOT(slot, TRACE_W_RESULT);
	if (!fits)
		token_queue_fail(slot, "validator_error",
						 "the validator's decision is too large to hand back");
}

static void
handle_request(TokenSlot *slot, uint64 ticket)
{
	ValidateCall call;
	ErrorData  *edata;
	char	   *token;
	int			token_len = slot->token_len;
	TimestampTz started;
	uint64		config_version = shared_config_version();

	MemoryContextReset(request_context);
	MemoryContextSwitchTo(request_context);

	/* Take the token out of shared memory and wipe it there. */
	token = palloc(token_len + 1);
	memcpy(token, slot->data, token_len);
	token[token_len] = '\0';
	explicit_bzero(slot->data, token_len + 1);

	memset(&call, 0, sizeof(call));
	call.slot = slot;
	memset(call.nulls, ' ', sizeof(call.nulls));
	call.values[0] = CStringGetTextDatum(token);
	call.values[1] = CStringGetTextDatum(slot->role);
	call.values[2] = CStringGetTextDatum(slot->database);
	if (slot->client_addr[0] != '\0')
		call.values[3] = DirectFunctionCall1(inet_in, CStringGetDatum(slot->client_addr));
	else
		call.nulls[3] = 'n';
	call.values[4] = BoolGetDatum(slot->ssl);
	/* On a standby nothing bumps the counter: pyhook reads oauth.config_state. */
	if (RecoveryInProgress())
		call.nulls[5] = 'n';
	else
		call.values[5] = Int64GetDatum((int64) config_version);

	pgstat_report_activity(STATE_RUNNING, "pg_oauth: validating a token");
	started = GetCurrentTimestamp();
	TRACE_SLOT(slot, TRACE_W_TXN);
	edata = spi_run_in_transaction(validate_step, &call, request_context);
	TRACE_SLOT(slot, TRACE_W_COMMITTED);
	slot->validation_us = (int64) (GetCurrentTimestamp() - started);
	pgstat_report_activity(STATE_IDLE, NULL);

	explicit_bzero(token, token_len);
	explicit_bzero(VARDATA_ANY(DatumGetPointer(call.values[0])), token_len);

	/*
	 * Terminated while validating (PL/Python does not check for interrupts):
	 * fail closed rather than hand back a decision from a dying worker.
	 */
	if (ProcDiePending)
		token_queue_fail(slot, "validator_unavailable",
						 "the validator worker was terminated while checking this token");
	else if (edata == NULL && strcmp(slot->reason, "validator_error") != 0)
		loaded_config_version = config_version; /* pyhook is up to date with it */
	else if (edata)
	{
		ereport(LOG,
				(errmsg("pg_oauth: validator error: %s", edata->message)));
		token_queue_fail(slot, "validator_error", edata->message);
		/* The extension may have been dropped: recheck before the next one. */
		if (edata->sqlerrcode == ERRCODE_UNDEFINED_FUNCTION ||
			edata->sqlerrcode == ERRCODE_UNDEFINED_SCHEMA ||
			edata->sqlerrcode == ERRCODE_UNDEFINED_TABLE)
		{
			worker_ready = false;
			if (validate_plan)
			{
				SPI_freeplan(validate_plan);
				validate_plan = NULL;
			}
		}
	}
	token_queue_complete(slot, ticket);
}

/*
 * oauth.warmup(): refresh keys that are due and load a configuration change.
 * False when another worker is refreshing (this one then did nothing).
 */
static bool
idle_refresh(void)
{
	ReadyCheck	rc = {false, NULL};
	ErrorData  *edata;
	uint64		config_version = shared_config_version();

	/* one refresher at a time; it is busy, so backends wake another worker */
	if (!token_queue_start_refresh(worker_index))
		return false;
	MemoryContextReset(request_context);
	pgstat_report_activity(STATE_RUNNING, "pg_oauth: refreshing keys");
	edata = spi_run_in_transaction(ready_step, &rc, request_context);
	pgstat_report_activity(STATE_IDLE, NULL);
	token_queue_end_refresh(worker_index);
	if (edata)
		ereport(LOG, (errmsg("pg_oauth: key refresh failed: %s", edata->message)));
	else if (!rc.installed)
		worker_ready = false;
	else
		loaded_config_version = config_version;
	return true;
}

/* ---- oauth.refresh_keys() ---- */

typedef struct KeyRefreshCall
{
	List	   *issuers;		/* names; NIL with all */
	bool		all;
	char	   *summary;
} KeyRefreshCall;

static void
key_refresh_step(void *arg)
{
	KeyRefreshCall *call = (KeyRefreshCall *) arg;
	Oid			argtypes[1] = {TEXTARRAYOID};
	Datum		values[1] = {(Datum) 0};
	char		nulls[1] = {'n'};

	if (!call->all)
	{
		int			n = list_length(call->issuers);
		Datum	   *names = palloc(sizeof(Datum) * Max(n, 1));
		ListCell   *lc;
		int			i = 0;

		foreach(lc, call->issuers)
			names[i++] = CStringGetTextDatum((char *) lfirst(lc));
		values[0] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false,
													TYPALIGN_INT));
		nulls[0] = ' ';
	}
	if (SPI_execute_with_args("SELECT oauth._refresh_keys_now($1)", 1, argtypes,
							  values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "oauth._refresh_keys_now() failed");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			call->summary = MemoryContextStrdup(request_context, TextDatumGetCString(d));
	}
}

/*
 * Carry out the oauth.refresh_keys() calls committed since the last one:
 * drop the keys of their issuers and fetch them again, before any other
 * login is decided.  False when that could not run: then this worker must
 * not decide logins with what it holds.
 */
static bool
keys_current(void)
{
	KeyRefreshCall call = {NIL, false, NULL};
	uint64		upto;
	ErrorData  *edata;

	if (key_refresh_generation() == keys_seen)
		return true;
	MemoryContextReset(request_context);
	MemoryContextSwitchTo(request_context);
	call.issuers = key_refresh_issuers(keys_seen, &upto, &call.all);
	token_queue_set_worker_state(worker_index, WORKER_BUSY, NULL);
	pgstat_report_activity(STATE_RUNNING, "pg_oauth: dropping and refetching keys");
	edata = spi_run_in_transaction(key_refresh_step, &call, request_context);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (edata)
	{
		char		msg[PG_OAUTH_WORKER_ERROR_LEN];

		pg_oauth_strlcpy_text(msg, psprintf("dropping and refetching keys failed: %s",
											edata->message), sizeof(msg));
		ereport(LOG, (errmsg("pg_oauth: validator %d: %s", worker_index, msg)));
		token_queue_set_worker_state(worker_index, WORKER_NOT_READY, msg);
		worker_ready = false;
		return false;
	}
	keys_seen = upto;
	ereport(LOG,
			(errmsg("pg_oauth: validator %d dropped the keys of %s and fetched them again: %s",
					worker_index,
					call.all ? "every issuer" : "the issuers oauth.refresh_keys() named",
					call.summary ? call.summary : "")));
	return true;
}

void
pg_oauth_worker_main(Datum main_arg)
{
	TimestampTz last_refresh;
	TimestampTz last_catch_up = 0;

	worker_index = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* Registered before connecting, so that a failed start is visible too. */
	before_shmem_exit(worker_exit_callback, Int32GetDatum(worker_index));
	token_queue_set_worker_state(worker_index, WORKER_STARTING, NULL);

	/*
	 * Regardless of datallowconn: the database's owner (maybe not a
	 * superuser) must not stop every token login with ALLOW_CONNECTIONS false.
	 */
	BackgroundWorkerInitializeConnection(pg_oauth_database, NULL, BGWORKER_BYPASS_ALLOWCONN);
	/* the housekeeper reports database settings these override */
	pg_oauth_pin_worker_settings(false);
	pgstat_report_appname("pg_oauth validator");

	request_context = AllocSetContextCreate(TopMemoryContext,
											"pg_oauth request",
											ALLOCSET_DEFAULT_SIZES);
	last_refresh = GetCurrentTimestamp();
	/* a new process holds no keys: only later oauth.refresh_keys() calls concern it */
	keys_seen = key_refresh_generation();

	for (;;)
	{
		TokenSlot  *slot;
		uint64		ticket;
		int			rc;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (!worker_ready)
		{
			worker_ready = try_become_ready();
			last_refresh = GetCurrentTimestamp();
			if (!worker_ready)
			{
				(void) WaitLatch(MyLatch,
								 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								 WORKER_RETRY_MS, PG_WAIT_EXTENSION);
				continue;
			}
		}

		if (!keys_current())
		{
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 WORKER_RETRY_MS, PG_WAIT_EXTENSION);
			continue;
		}

		slot = token_queue_claim(worker_index, &ticket);
		if (slot != NULL)
		{
			/* committed between the check above and the claim: this login waits for it */
			if (!keys_current())
			{
				token_queue_fail(slot, "validator_unavailable",
								 "the validator could not drop and refetch keys after oauth.refresh_keys()");
				token_queue_complete(slot, ticket);
				continue;
			}
			handle_request(slot, ticket);
			/* steady load must not starve key refreshes into the login path */
			if (TimestampDifferenceExceeds(last_refresh, GetCurrentTimestamp(),
										   WORKER_BUSY_REFRESH_MS))
			{
				idle_refresh();
				last_refresh = GetCurrentTimestamp();
			}
			continue;
		}

		/* a committed configuration change: load it now, not at the next login */
		if (config_catch_up_due(last_catch_up))
		{
			last_catch_up = GetCurrentTimestamp();
			if (idle_refresh())
				last_refresh = GetCurrentTimestamp();
			continue;
		}

		rc = WaitLatch(MyLatch,
					   WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   shared_config_version() != loaded_config_version ?
					   WORKER_CATCH_UP_RETRY_MS : WORKER_IDLE_REFRESH_MS,
					   PG_WAIT_EXTENSION);
		if ((rc & WL_TIMEOUT) &&
			TimestampDifferenceExceeds(last_refresh, GetCurrentTimestamp(),
									   WORKER_IDLE_REFRESH_MS))
		{
			idle_refresh();
			last_refresh = GetCurrentTimestamp();
		}
	}
}
