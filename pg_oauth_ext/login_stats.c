/*-------------------------------------------------------------------------
 *
 * login_stats.c
 *	  Per-issuer counters in shared memory behind oauth.stats: attempts,
 *	  successes, refusals by reason, JWKS fetches, key cache hits, and
 *	  latency histograms (validation, queue wait, the whole login).
 *
 * Histograms have 4 buckets per power of two of microseconds, and the exact
 * sum of what they counted; p50/p99 are reported as their bucket's lower
 * bound, at most 25 % below the true value.  oauth.stats_histogram exports
 * them cumulatively at powers of two only: exact boundaries of the fine
 * buckets, so its counts are counts, not estimates.
 * Issuers are told apart by their SHA-256, whatever their length; their
 * names are kept in identity_store.c.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "port/pg_bitutils.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_stats);
PG_FUNCTION_INFO_V1(pg_oauth_fn_stats_reset);
PG_FUNCTION_INFO_V1(pg_oauth_fn_stats_histogram);
PG_FUNCTION_INFO_V1(pg_oauth_fn_record_jwks_fetch);
PG_FUNCTION_INFO_V1(pg_oauth_fn_keys_changed);

/* pyhook: a key set changed, so decisions cached before may rest on a removed key. */
Datum
pg_oauth_fn_keys_changed(PG_FUNCTION_ARGS)
{
	decision_cache_keys_changed();
	PG_RETURN_VOID();
}

#define STATS_ISSUERS		32
#define HIST_BUCKETS		(4 * 40)

/*
 * The phases timed, in the order and with the names oauth.stats_histogram
 * shows: a worker's decision; a login waiting for a worker; the whole
 * attempt, from the hook's start to its decision (the audit's elapsed_ms,
 * decision cache hits and refusals included).
 */
typedef enum LatencyPhase
{
	PHASE_VALIDATION,
	PHASE_QUEUE_WAIT,
	PHASE_LOGIN,
	NPHASES
} LatencyPhase;

static const char *const phase_names[NPHASES] = {"validation", "queue_wait", "login"};

typedef struct LatencyHist
{
	uint64		sum_us;			/* of every value counted, for an exact mean */
	uint64		counts[HIST_BUCKETS];	/* 64-bit: a flood must not wrap one */
} LatencyHist;

/*
 * The upper bounds oauth.stats_histogram exports: 2^k microseconds, k from
 * HIST_EXPORT_MIN_LOG2 (64 us) to HIST_EXPORT_MAX_LOG2 (about 8.4 s), then
 * +Inf.  2^k is the lower bound of fine bucket 4 * (k - 1), so "below 2^k"
 * is the sum of the fine buckets before it.  Values are whole microseconds,
 * truncated: a time is below 2^k us exactly when its truncation is.
 */
#define HIST_EXPORT_MIN_LOG2	6
#define HIST_EXPORT_MAX_LOG2	23
StaticAssertDecl(4 * (HIST_EXPORT_MAX_LOG2 - 1) < HIST_BUCKETS - 1,
				 "the exported bounds must lie below the last, open-ended bucket");

/* Every reason code a refusal can carry; anything else counts as "other". */
static const char *const reason_codes[] = {
	"malformed", "too_large", "unsupported_alg", "untrusted_issuer", "unknown_key",
	"bad_signature", "expired", "not_yet_valid", "lifetime_too_long",
	"audience_mismatch", "missing_claim", "revoked", "role_not_allowed",
	"database_not_allowed", "client_not_allowed", "unknown_role",
	"superuser_forbidden", "startup_option_forbidden", "ssl_required",
	"jwks_unavailable", "rate_limited", "too_many_connections", "unsupported_typ",
	"validator_unavailable", "validator_timeout", "validator_error",
	"provisioning_forbidden", "provisioning_unavailable", "other"
};
#define NREASONS lengthof(reason_codes)

typedef struct IssuerStats
{
	bool		used;
	bool		has_issuer;		/* false: refused before an issuer was known */
	uint8		issuer_hash[PG_OAUTH_TOKEN_HASH_LEN];
	dsa_pointer issuer_name;	/* invalid: no issuer, or its name found no room */
	uint64		attempts;
	uint64		successes;
	uint64		refusals[NREASONS];
	uint64		jwks_fetch_ok;
	uint64		jwks_fetch_failed;
	uint64		key_cache_hits;
	uint64		key_cache_misses;
	uint64		decision_cache_hits;
	LatencyHist hist[NPHASES];
} IssuerStats;

typedef struct LoginStats
{
	LWLock	   *lock;
	TimestampTz since;
	IssuerStats issuers[STATS_ISSUERS];
} LoginStats;

static LoginStats *stats = NULL;

Size
login_stats_shmem_size(void)
{
	return sizeof(LoginStats);
}

void
login_stats_shmem_startup(void)
{
	bool		found;

	stats = ShmemInitStruct("pg_oauth stats", sizeof(LoginStats), &found);
	if (!found)
	{
		memset(stats, 0, sizeof(LoginStats));
		stats->lock = pg_oauth_lock(PG_OAUTH_LOCK_STATS);
		stats->since = GetCurrentTimestamp();
	}
}

static int
hist_bucket(int64 us)
{
	int			log2;
	int			sub;

	if (us < 4)
		return (int) Max(us, 0);
	log2 = pg_leftmost_one_pos64((uint64) us);
	sub = (int) ((us >> (log2 - 2)) & 3);
	return Min(HIST_BUCKETS - 1, 4 * (log2 - 1) + sub);
}

/* lower bound in microseconds of a bucket */
static double
bucket_value(int b)
{
	int			log2,
				sub;

	if (b < 4)
		return b;
	log2 = b / 4 + 1;
	sub = b % 4;
	return (double) ((UINT64CONST(1) << log2) + ((uint64) sub << (log2 - 2)));
}

/* The stats slot of an issuer (NULL: none known), or NULL; lock held. */
static IssuerStats *
find_slot(const char *issuer, const uint8 *hash)
{
	int			i;

	for (i = 0; i < STATS_ISSUERS; i++)
	{
		IssuerStats *s = &stats->issuers[i];

		if (s->used && s->has_issuer == (issuer != NULL) &&
			(issuer == NULL || memcmp(s->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN) == 0))
			return s;
	}
	return NULL;
}

/*
 * Lock the stats and return the slot of an issuer, taking a free one for a
 * new issuer.  Its name is stored first, without the lock (that may have to
 * map shared memory); *unused is a name another backend's slot made
 * unneeded, for the caller to free once it released the lock.
 */
static IssuerStats *
lock_issuer_slot(const char *issuer, dsa_pointer *unused)
{
	uint8		hash[PG_OAUTH_TOKEN_HASH_LEN];
	IssuerStats *s;
	dsa_pointer name;
	int			i;

	*unused = InvalidDsaPointer;
	if (issuer != NULL)
		pg_oauth_sha256(issuer, strlen(issuer), hash);
	LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	if ((s = find_slot(issuer, hash)) != NULL)
		return s;
	LWLockRelease(stats->lock);

	name = issuer ? identity_text_store(issuer, NULL, NULL) : InvalidDsaPointer;
	LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	if ((s = find_slot(issuer, hash)) != NULL)
	{
		*unused = name;
		return s;
	}
	for (i = 0; i < STATS_ISSUERS; i++)
	{
		s = &stats->issuers[i];
		if (s->used)
			continue;
		s->used = true;
		s->has_issuer = (issuer != NULL);
		if (issuer != NULL)
			memcpy(s->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN);
		s->issuer_name = name;
		return s;
	}
	/* full: fold into the no-issuer row rather than lose the count */
	*unused = name;
	return &stats->issuers[0];
}

static int
reason_index(const char *reason)
{
	int			i;

	for (i = 0; i < (int) NREASONS - 1; i++)
		if (strcmp(reason, reason_codes[i]) == 0)
			return i;
	return NREASONS - 1;
}

void
login_stats_record(const char *issuer, const char *reason, bool ok,
				   bool from_cache, int key_cache_hit, int64 validation_us, int64 queue_us,
				   int64 login_us)
{
	int64		phase_us[NPHASES] = {validation_us, queue_us, login_us};
	int			p;

	IssuerStats *s;
	dsa_pointer unused;

	if (stats == NULL)
		return;
	if (issuer != NULL && issuer[0] == '\0')
		issuer = NULL;
	s = lock_issuer_slot(issuer, &unused);
	s->attempts++;
	if (ok)
		s->successes++;
	else
		s->refusals[reason_index(reason)]++;
	if (from_cache)
		s->decision_cache_hits++;
	else if (key_cache_hit == 1)
		s->key_cache_hits++;
	else if (key_cache_hit == 0)
		s->key_cache_misses++;
	for (p = 0; p < NPHASES; p++)
	{
		if (phase_us[p] < 0)
			continue;			/* not timed: no worker, or not reached */
		s->hist[p].counts[hist_bucket(phase_us[p])]++;
		s->hist[p].sum_us += (uint64) phase_us[p];
	}
	LWLockRelease(stats->lock);
	identity_text_free(unused);
}

/* Called by pyhook (through SQL) after each discovery/JWKS fetch. */
Datum
pg_oauth_fn_record_jwks_fetch(PG_FUNCTION_ARGS)
{
	char	   *issuer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	bool		ok = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	IssuerStats *s;
	dsa_pointer unused;

	if (stats == NULL)
		PG_RETURN_VOID();
	if (issuer != NULL && issuer[0] == '\0')
		issuer = NULL;
	s = lock_issuer_slot(issuer, &unused);
	if (ok)
		s->jwks_fetch_ok++;
	else
		s->jwks_fetch_failed++;
	LWLockRelease(stats->lock);
	identity_text_free(unused);
	PG_RETURN_VOID();
}

static Datum
percentile_ms(const uint64 *hist, double q, bool *isnull)
{
	uint64		total = 0,
				seen = 0;
	int			b;

	for (b = 0; b < HIST_BUCKETS; b++)
		total += hist[b];
	*isnull = (total == 0);
	if (total == 0)
		return (Datum) 0;
	for (b = 0; b < HIST_BUCKETS; b++)
	{
		seen += hist[b];
		if ((double) seen >= q * (double) total)
			break;
	}
	return Float8GetDatum(bucket_value(Min(b, HIST_BUCKETS - 1)) / 1000.0);
}

static Datum
refusals_jsonb(const IssuerStats *s)
{
	StringInfoData buf;
	int			i;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (i = 0; i < (int) NREASONS; i++)
	{
		if (s->refusals[i] == 0)
			continue;
		appendStringInfo(&buf, "%s\"%s\": " UINT64_FORMAT, first ? "" : ", ",
						 reason_codes[i], s->refusals[i]);
		first = false;
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/*
 * A copy of issuer slot i, its name (NULL: attempts refused before an issuer
 * was known, or a name that did not fit) and the time of the last reset,
 * taken under the lock: a reset frees the name.  False: the slot is unused.
 */
static bool
issuer_snapshot(int i, IssuerStats *s, char **issuer, TimestampTz *since)
{
	LWLockAcquire(stats->lock, LW_SHARED);
	*s = stats->issuers[i];
	if (since)
		*since = stats->since;
	*issuer = NULL;
	if (s->used)
		identity_text_fetch(s->issuer_name, issuer, NULL, NULL);
	LWLockRelease(stats->lock);
	return s->used;
}

Datum
pg_oauth_fn_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (stats == NULL)
		return (Datum) 0;

	for (i = 0; i < STATS_ISSUERS; i++)
	{
		IssuerStats s;
		TimestampTz since;
		char	   *issuer = NULL;
		Datum		values[14];
		bool		nulls[14];

		if (!issuer_snapshot(i, &s, &issuer, &since))
			continue;

		memset(nulls, false, sizeof(nulls));
		values[0] = issuer ? CStringGetTextDatum(issuer) : (Datum) 0;
		nulls[0] = (issuer == NULL);
		values[1] = Int64GetDatum((int64) s.attempts);
		values[2] = Int64GetDatum((int64) s.successes);
		values[3] = refusals_jsonb(&s);
		values[4] = Int64GetDatum((int64) s.jwks_fetch_ok);
		values[5] = Int64GetDatum((int64) s.jwks_fetch_failed);
		values[6] = Int64GetDatum((int64) s.key_cache_hits);
		values[7] = Int64GetDatum((int64) s.key_cache_misses);
		values[8] = percentile_ms(s.hist[PHASE_VALIDATION].counts, 0.50, &nulls[8]);
		values[9] = percentile_ms(s.hist[PHASE_VALIDATION].counts, 0.99, &nulls[9]);
		values[10] = percentile_ms(s.hist[PHASE_QUEUE_WAIT].counts, 0.50, &nulls[10]);
		values[11] = percentile_ms(s.hist[PHASE_QUEUE_WAIT].counts, 0.99, &nulls[11]);
		values[12] = Int64GetDatum((int64) s.decision_cache_hits);
		values[13] = TimestampTzGetDatum(since);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * oauth.stats_histogram: per issuer and phase, the cumulative count of
 * values below each exported bound (the last one +Inf, the total), with the
 * exact sum; one row per bound.
 */
Datum
pg_oauth_fn_stats_histogram(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (stats == NULL)
		return (Datum) 0;

	for (i = 0; i < STATS_ISSUERS; i++)
	{
		IssuerStats s;
		char	   *issuer = NULL;
		int			p;

		if (!issuer_snapshot(i, &s, &issuer, NULL))
			continue;

		for (p = 0; p < NPHASES; p++)
		{
			const LatencyHist *h = &s.hist[p];
			uint64		total = 0;
			uint64		below = 0;
			int			b = 0;
			int			k;

			for (k = 0; k < HIST_BUCKETS; k++)
				total += h->counts[k];
			for (k = HIST_EXPORT_MIN_LOG2; k <= HIST_EXPORT_MAX_LOG2 + 1; k++)
			{
				Datum		values[6];
				bool		nulls[6];
				bool		inf = (k > HIST_EXPORT_MAX_LOG2);

				for (; !inf && b < 4 * (k - 1); b++)
					below += h->counts[b];
				memset(nulls, false, sizeof(nulls));
				values[0] = issuer ? CStringGetTextDatum(issuer) : (Datum) 0;
				nulls[0] = (issuer == NULL);
				values[1] = CStringGetTextDatum(phase_names[p]);
				values[2] = Float8GetDatum(inf ? get_float8_infinity() :
										   (double) (UINT64CONST(1) << k) / 1e6);
				values[3] = Int64GetDatum((int64) (inf ? total : below));
				values[4] = Float8GetDatum((double) h->sum_us / 1e6);
				values[5] = Int64GetDatum((int64) total);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
		}
	}
	return (Datum) 0;
}

Datum
pg_oauth_fn_stats_reset(PG_FUNCTION_ARGS)
{
	dsa_pointer names[STATS_ISSUERS];
	int			i;

	if (stats == NULL)
		PG_RETURN_VOID();
	LWLockAcquire(stats->lock, LW_EXCLUSIVE);
	for (i = 0; i < STATS_ISSUERS; i++)
		names[i] = stats->issuers[i].used ? stats->issuers[i].issuer_name : InvalidDsaPointer;
	memset(stats->issuers, 0, sizeof(stats->issuers));
	stats->since = GetCurrentTimestamp();
	LWLockRelease(stats->lock);
	for (i = 0; i < STATS_ISSUERS; i++)
		identity_text_free(names[i]);
	PG_RETURN_VOID();
}
