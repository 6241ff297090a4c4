/*-------------------------------------------------------------------------
 *
 * standby_follow.c
 *	  A hot standby follows its primary's configuration, and a promoted
 *	  standby takes over.
 *
 *	  On a primary, a committed change to oauth.* moves the shared
 *	  configuration version (session_state.c's commit callback): workers
 *	  reload, cached decisions go, and the live sessions a revocation covers
 *	  end.  Replay on a standby fires no trigger and runs no commit callback,
 *	  so none of that happens there by itself.  The housekeeper calls
 *	  standby_follow_step every tick on a standby: one read-only statement on
 *	  oauth.config_state and oauth.jwks_cache, and when they moved it does
 *	  what a commit on the primary does.  Workers then adopt the replayed
 *	  keys from oauth.jwks_cache (pyhook seeds documents newer than its own).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_standby_followed);

/* What this housekeeper saw last; seen: false until the first look. */
typedef struct Followed
{
	bool		seen;
	int64		table_id;		/* config_state's tableoid: a re-created extension */
	int64		version;
	int64		highest_id;		/* revocations_highest_id */
	int64		rewrites;		/* revocations_rewrites */
	float8		keys_at;		/* the newest fetched_at of oauth.jwks_cache */
} Followed;

static Followed followed = {false};

#define FOLLOW_QUERY \
	"SELECT s.tableoid::pg_catalog.int8, s.version, s.revocations_highest_id, " \
	"s.revocations_rewrites, (SELECT COALESCE(pg_catalog.max(" \
	"pg_catalog.date_part('epoch', c.fetched_at)), 0)::pg_catalog.float8 " \
	"FROM oauth.jwks_cache c) FROM oauth.config_state s"

#define NO_REVOCATIONS	(-2)	/* standby_follow_step: none to act on */

/*
 * the revocations to act on: those added since (id above $1), or all ($1 NULL).
 * issued_before through to_jsonb: a 1.0 schema (library updated, extension
 * not yet) has no such column, and NULL there means every token, as in 1.0.
 */
#define REVOCATIONS_QUERY \
	"SELECT issuer, subject, token_id, (pg_catalog.to_jsonb(r) OPERATOR(pg_catalog.->>) " \
	"'issued_before')::pg_catalog.timestamptz FROM oauth.revocations r " \
	"WHERE ($1 IS NULL OR id OPERATOR(pg_catalog.>) $1) " \
	"AND (expires_at IS NULL OR expires_at OPERATOR(pg_catalog.>) pg_catalog.now())"

static int64
int8_column(int col, bool *isnull)
{
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, isnull);

	return *isnull ? 0 : DatumGetInt64(d);
}

static char *
text_column(HeapTuple tuple, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* End the live sessions that the revocations added since highest (all: -1) cover. */
static int
end_revoked_sessions(int64 since)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(since)};
	char		nulls[1] = {since < 0 ? 'n' : ' '};
	int			ended = 0;
	uint64		i;

	if (SPI_execute_with_args(REVOCATIONS_QUERY, 1, argtypes, values, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "reading oauth.revocations failed");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		char	   *issuer = text_column(tuple, 1);
		char	   *subject = text_column(tuple, 2);
		char	   *token_id = text_column(tuple, 3);
		bool		no_issued_before;
		Datum		issued_before = SPI_getbinval(tuple, SPI_tuptable->tupdesc, 4,
												  &no_issued_before);

		if (issuer || subject || token_id)
			ended += session_registry_end_covered(issuer, subject, token_id, !no_issued_before,
												  no_issued_before ? 0 :
												  DatumGetTimestampTz(issued_before));
	}
	return ended;
}

void
standby_follow_step(void *arg)
{
	bool	   *installed = (bool *) arg;
	Followed	now;
	bool		isnull;
	bool		first;
	bool		config_moved;
	bool		keys_moved;
	int64		since;			/* revocations above this id to act on; -1: all */
	int			ended = 0;

	*installed = pg_oauth_extension_present();
	if (!*installed)
	{
		followed.seen = false;
		return;
	}
	if (SPI_execute(FOLLOW_QUERY, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading oauth.config_state failed");
	now.seen = true;
	now.table_id = int8_column(1, &isnull);
	now.version = int8_column(2, &isnull);
	now.highest_id = int8_column(3, &isnull);
	now.rewrites = int8_column(4, &isnull);
	now.keys_at = DatumGetFloat8(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 5, &isnull));

	first = !followed.seen;
	if (first)
	{
		/*
		 * A new housekeeper (or extension): workers re-read what may have been
		 * replayed since they loaded, and sessions may have logged in before
		 * this first look while a revocation was replayed: every revocation is
		 * checked once.
		 */
		config_moved = keys_moved = true;
		since = -1;
	}
	else
	{
		config_moved = now.table_id != followed.table_id || now.version != followed.version;
		keys_moved = now.keys_at != followed.keys_at;
		if (now.table_id != followed.table_id || now.rewrites != followed.rewrites)
			since = -1;
		else if (now.highest_id > followed.highest_id)
			since = followed.highest_id;
		else
			since = NO_REVOCATIONS;
	}
	/* first, as a commit on the primary: what workers read next is this */
	if (config_moved || keys_moved)
		pg_oauth_config_moved();
	if (since != NO_REVOCATIONS)
		ended = end_revoked_sessions(since);
	if (first && ended > 0)
		ereport(LOG,
				(errmsg("pg_oauth: standby ended %d token sessions covered by replayed revocations",
						ended)));
	else if (!first && config_moved)
		ereport(LOG,
				(errmsg("pg_oauth: standby follows the primary's configuration version %lld",
						(long long) now.version),
				 ended > 0 ? errdetail("%d token sessions covered by replayed revocations end.", ended) : 0));
	followed = now;
	pg_atomic_write_u64(&pg_oauth_shared->followed_version, (uint64) now.version);
	pg_atomic_write_u64(&pg_oauth_shared->followed_at, (uint64) GetCurrentTimestamp());
}

/*
 * The standby was promoted: from now on commits here move the version.  Move
 * it once more so the workers read everything as a primary's, and say so.
 */
void
standby_follow_promoted(void)
{
	if (pg_oauth_shared == NULL)
		return;
	pg_oauth_config_moved();
	followed.seen = false;
	ereport(LOG,
			(errmsg("pg_oauth: this server is now a primary: its validator workers take over with the replicated configuration and keys (version %llu)",
					(unsigned long long) pg_atomic_read_u64(&pg_oauth_shared->followed_version))));
}

/*
 * oauth._standby_followed(): the configuration version this standby's
 * housekeeper last applied and when it looked; NULLs before its first look.
 */
Datum
pg_oauth_fn_standby_followed(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	TimestampTz at;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	at = pg_oauth_shared ? (TimestampTz) pg_atomic_read_u64(&pg_oauth_shared->followed_at) : 0;
	if (at == 0)
		nulls[0] = nulls[1] = true;
	else
	{
		values[0] = Int64GetDatum((int64) pg_atomic_read_u64(&pg_oauth_shared->followed_version));
		values[1] = TimestampTzGetDatum(at);
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}
