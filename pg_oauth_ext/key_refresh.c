/*-------------------------------------------------------------------------
 *
 * key_refresh.c
 *	  oauth.refresh_keys(): every validator worker drops the keys it holds
 *	  for an issuer (or for all) and fetches them again before it decides
 *	  another login.
 *
 * A request is noted in the calling transaction and published when it
 * commits: each request gets the next generation number and a place in a
 * small ring (issuer, time), the decision cache forgets everything, and the
 * workers are woken.  A worker compares the generation with the last one it
 * handled before it claims a login and again right after (a request
 * published in between must not be decided with the dropped keys), and
 * refreshes first.
 *
 * The time of a request also hides every persisted document fetched before
 * it (oauth._keys_dropped_at): a worker that fetched the withdrawn key just
 * before the call and stores it in oauth.jwks_cache just after cannot make
 * anyone adopt it again.  Shared memory only: a restart forgets the times,
 * and the rows refresh_keys deleted stay deleted.
 *
 * Also the cooldown of the refetch a worker makes for an unknown kid
 * (oauth._kid_refetch_allowed), shared by all workers.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_request_key_refresh);
PG_FUNCTION_INFO_V1(pg_oauth_fn_keys_dropped_at);
PG_FUNCTION_INFO_V1(pg_oauth_fn_kid_refetch_allowed);

/* requests remembered; a worker that falls further behind refreshes every issuer */
#define KEY_REFRESH_RING		32
/* distinct issuers one transaction may name; more become "all issuers" */
#define KEY_REFRESH_PENDING_MAX	8
/* an issuer name this long or longer is not kept: its request covers all issuers */
#define KEY_REFRESH_ISSUER_LEN	256

typedef struct KeyRefreshRequest
{
	uint64		generation;		/* 0: never used */
	TimestampTz requested_at;	/* documents fetched before this are hidden */
	bool		all_issuers;
	char		issuer[KEY_REFRESH_ISSUER_LEN];
} KeyRefreshRequest;

typedef struct KeyRefreshShared
{
	LWLock	   *lock;
	pg_atomic_uint64 generation;	/* of the newest request */
	/* the latest requested_at of a request the ring no longer holds */
	TimestampTz forgotten_at;
	KeyRefreshRequest ring[KEY_REFRESH_RING];
} KeyRefreshShared;

static KeyRefreshShared *key_refresh = NULL;

/* requests of this backend's transaction, published at commit */
static bool pending = false;
static bool pending_all = false;
static int	npending = 0;
static char pending_issuers[KEY_REFRESH_PENDING_MAX][KEY_REFRESH_ISSUER_LEN];
static bool xact_callback_registered = false;

Size
key_refresh_shmem_size(void)
{
	return sizeof(KeyRefreshShared);
}

void
key_refresh_shmem_startup(void)
{
	bool		found;

	key_refresh = ShmemInitStruct("pg_oauth key refresh", sizeof(KeyRefreshShared), &found);
	if (!found)
	{
		memset(key_refresh, 0, sizeof(KeyRefreshShared));
		key_refresh->lock = &(GetNamedLWLockTranche(PG_OAUTH_KEY_REFRESH_TRANCHE))->lock;
		pg_atomic_init_u64(&key_refresh->generation, 0);
		key_refresh->forgotten_at = DT_NOBEGIN;
	}
}

/* One request into the ring (lock held exclusively). */
static void
add_request_locked(const char *issuer, TimestampTz now)
{
	uint64		generation = pg_atomic_read_u64(&key_refresh->generation) + 1;
	KeyRefreshRequest *r = &key_refresh->ring[generation % KEY_REFRESH_RING];

	if (r->generation != 0 && r->requested_at > key_refresh->forgotten_at)
		key_refresh->forgotten_at = r->requested_at;
	r->generation = generation;
	r->requested_at = now;
	r->all_issuers = (issuer == NULL);
	pg_oauth_strlcpy_text(r->issuer, issuer ? issuer : "", sizeof(r->issuer));
	pg_atomic_write_u64(&key_refresh->generation, generation);
}

static void
clear_pending(void)
{
	pending = pending_all = false;
	npending = 0;
}

/*
 * Runs inside CommitTransaction: nothing here may raise an error.  The
 * generation moves before the decision cache's epoch, so a login that sees
 * the new epoch reaches a worker that sees the new generation.
 */
static void
publish_pending(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (key_refresh == NULL)
		return;
	LWLockAcquire(key_refresh->lock, LW_EXCLUSIVE);
	if (pending_all)
		add_request_locked(NULL, now);
	else
		for (i = 0; i < npending; i++)
			add_request_locked(pending_issuers[i], now);
	LWLockRelease(key_refresh->lock);
	decision_cache_keys_changed();
	pg_oauth_wake_all_workers();
}

static void
key_refresh_xact_callback(XactEvent event, void *arg)
{
	if (!pending)
		return;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* a prepared transaction may never commit; refreshing anyway is harmless */
		case XACT_EVENT_PREPARE:
			publish_pending();
			clear_pending();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			clear_pending();
			break;
		default:
			break;
	}
}

/*
 * oauth._request_key_refresh(issuer): at commit, every worker drops and
 * refetches the keys of issuer (NULL: of every issuer).  Called by
 * oauth.refresh_keys() and by the triggers on oauth.jwks_cache.
 */
Datum
pg_oauth_fn_request_key_refresh(PG_FUNCTION_ARGS)
{
	char	   *issuer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			i;

	if (!xact_callback_registered)
	{
		RegisterXactCallback(key_refresh_xact_callback, NULL);
		xact_callback_registered = true;
	}
	pending = true;
	/* a name the ring cannot hold whole, or one too many: every issuer */
	if (issuer == NULL || strlen(issuer) >= KEY_REFRESH_ISSUER_LEN)
		pending_all = true;
	if (pending_all)
		PG_RETURN_VOID();
	for (i = 0; i < npending; i++)
		if (strcmp(pending_issuers[i], issuer) == 0)
			PG_RETURN_VOID();
	if (npending == KEY_REFRESH_PENDING_MAX)
		pending_all = true;
	else
		pg_oauth_strlcpy_text(pending_issuers[npending++], issuer, KEY_REFRESH_ISSUER_LEN);
	PG_RETURN_VOID();
}

/*
 * oauth._keys_dropped_at(issuer): documents of issuer fetched at or before
 * this time must not be adopted (the latest committed refresh_keys covering
 * it); -infinity when there was none since the server started.
 */
Datum
pg_oauth_fn_keys_dropped_at(PG_FUNCTION_ARGS)
{
	char	   *issuer = text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz at = DT_NOBEGIN;
	int			i;

	if (key_refresh == NULL)
		PG_RETURN_TIMESTAMPTZ(at);
	LWLockAcquire(key_refresh->lock, LW_SHARED);
	at = key_refresh->forgotten_at;
	for (i = 0; i < KEY_REFRESH_RING; i++)
	{
		KeyRefreshRequest *r = &key_refresh->ring[i];

		if (r->generation != 0 && r->requested_at > at &&
			(r->all_issuers || strcmp(r->issuer, issuer) == 0))
			at = r->requested_at;
	}
	LWLockRelease(key_refresh->lock);
	PG_RETURN_TIMESTAMPTZ(at);
}

/* ---- the workers' side ---- */

/* The generation of the newest published request (0: none yet). */
uint64
key_refresh_generation(void)
{
	if (key_refresh == NULL)
		return 0;
	/* pairs with the lock a login's hand-off went through */
	pg_memory_barrier();
	return pg_atomic_read_u64(&key_refresh->generation);
}

/*
 * The issuers named by the requests after generation seen, as a list of
 * palloc'd names; *all when every issuer is due (a request for all, or
 * requests the ring no longer holds).  *upto: the generation they reach.
 */
List *
key_refresh_issuers(uint64 seen, uint64 *upto, bool *all)
{
	List	   *issuers = NIL;
	uint64		g;

	*all = false;
	*upto = seen;
	if (key_refresh == NULL)
		return NIL;
	LWLockAcquire(key_refresh->lock, LW_SHARED);
	*upto = pg_atomic_read_u64(&key_refresh->generation);
	if (*upto - seen > KEY_REFRESH_RING)
		*all = true;
	for (g = seen + 1; g <= *upto && !*all; g++)
	{
		KeyRefreshRequest *r = &key_refresh->ring[g % KEY_REFRESH_RING];

		if (r->generation != g || r->all_issuers)
			*all = true;
		else
			issuers = lappend(issuers, pstrdup(r->issuer));
	}
	LWLockRelease(key_refresh->lock);
	if (*all)
	{
		list_free_deep(issuers);
		issuers = NIL;
	}
	return issuers;
}

/*
 * May a worker refetch this issuer's keys for an unknown kid now?  At most
 * once per cooldown per issuer across all workers: each worker has its own
 * key cache, and a storm of random kids must not multiply fetches by the
 * number of workers.  Claims the slot when it answers true.
 */
Datum
pg_oauth_fn_kid_refetch_allowed(PG_FUNCTION_ARGS)
{
	text	   *issuer = PG_GETARG_TEXT_PP(0);
	double		cooldown_s = PG_GETARG_FLOAT8(1);
	TimestampTz now = GetCurrentTimestamp();
	uint8		hash[PG_OAUTH_TOKEN_HASH_LEN];
	KidRefetch *slot = NULL;
	KidRefetch *oldest = NULL;
	bool		allowed = true;
	int			i;

	if (pg_oauth_shared == NULL)
		PG_RETURN_BOOL(true);
	/* issuers are told apart whole, whatever their length */
	pg_oauth_sha256(VARDATA_ANY(issuer), VARSIZE_ANY_EXHDR(issuer), hash);

	LWLockAcquire(pg_oauth_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < PG_OAUTH_REFETCH_ISSUERS; i++)
	{
		KidRefetch *r = &pg_oauth_shared->kid_refetch[i];

		if (r->used && memcmp(r->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN) == 0)
		{
			slot = r;
			break;
		}
		if (oldest == NULL || r->at < oldest->at)
			oldest = r;
	}
	if (slot != NULL &&
		now < TimestampTzPlusMilliseconds(slot->at, (int64) (cooldown_s * 1000.0)))
		allowed = false;
	else
	{
		if (slot == NULL)
		{
			slot = oldest;
			slot->used = true;
			memcpy(slot->issuer_hash, hash, PG_OAUTH_TOKEN_HASH_LEN);
		}
		slot->at = now;
	}
	LWLockRelease(pg_oauth_shared->lock);
	PG_RETURN_BOOL(allowed);
}
