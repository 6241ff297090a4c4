/*-------------------------------------------------------------------------
 *
 * decision_cache.c
 *	  Recent successful decisions in shared memory, keyed by the SHA-256 of
 *	  the token together with role, database, client address and SSL, so a
 *	  token presented again (a connection pool opening connections) is
 *	  admitted without a round trip to a validator worker.
 *
 * Only the hash is kept, never the token.  An entry is used only while
 *	- the token has not expired (its exp, without leeway),
 *	- the configuration version is the one it was made under (any change to
 *	  issuers, mappings or revocations empties the cache in effect),
 *	- no JWKS was fetched since (a fetch may have removed its key),
 *	- the server is a primary (a standby's configuration changes through WAL,
 *	  which bumps no counter).
 * Refusals are never cached, nor decisions too large for an entry: the
 * identity and the claims share one area of it, so an identity is kept whole
 * or the decision is not cached (a cut identity would not be the token's).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#define CACHE_ENTRIES		512
#define CACHE_PROBE			8
/* issuer, subject, token id and claims; larger decisions are simply not cached */
#define CACHE_DATA_MAX		(4096 + 3 * 256)

typedef struct CacheEntry
{
	bool		used;
	uint8		token_hash[PG_OAUTH_TOKEN_HASH_LEN];
	char		role[NAMEDATALEN];	/* as asked; "" for oauth.authenticate(token) */
	char		granted[NAMEDATALEN];	/* the role the decision admits */
	char		database[NAMEDATALEN];
	char		client_addr[64];
	bool		ssl;
	uint64		config_version;
	uint64		key_epoch;
	TimestampTz expires_at;
	TimestampTz stored_at;
	int			max_sessions;
	char		kid[PG_OAUTH_KID_LEN];
	char		alg[PG_OAUTH_ALG_LEN];
	bool		has_subject;
	bool		has_token_id;
	/* issuer, subject and token id (when it has them), claims: NUL-terminated */
	char		data[CACHE_DATA_MAX];
} CacheEntry;

typedef struct DecisionCache
{
	LWLock	   *lock;
	pg_atomic_uint64 key_epoch;
	CacheEntry	entries[CACHE_ENTRIES];
} DecisionCache;

static DecisionCache *cache = NULL;

Size
decision_cache_shmem_size(void)
{
	return sizeof(DecisionCache);
}

void
decision_cache_shmem_startup(void)
{
	bool		found;

	cache = ShmemInitStruct("pg_oauth decision cache", sizeof(DecisionCache), &found);
	if (!found)
	{
		memset(cache, 0, sizeof(DecisionCache));
		cache->lock = pg_oauth_lock(PG_OAUTH_LOCK_DECISIONS);
		pg_atomic_init_u64(&cache->key_epoch, 1);
	}
}

/* Keys may have changed: no cached decision made before this is used again. */
void
decision_cache_keys_changed(void)
{
	if (cache != NULL)
		pg_atomic_fetch_add_u64(&cache->key_epoch, 1);
}

static bool
cache_usable(void)
{
	return cache != NULL && pg_oauth_decision_cache && pg_oauth_shared != NULL &&
		!RecoveryInProgress();
}

/* For a caller that has the token's hash already (oauth.authenticate()). */
bool
decision_cache_usable(void)
{
	return cache_usable();
}

bool
decision_cache_hash(const char *token, int len, uint8 *out)
{
	/* no hashing at all when the cache cannot be used (off, standby) */
	if (!cache_usable())
		return false;
	pg_oauth_sha256(token, len, out);
	return true;
}

static uint32
bucket_of(const uint8 *hash)
{
	uint32		b;

	memcpy(&b, hash, sizeof(b));
	return b % CACHE_ENTRIES;
}

static bool
entry_matches(const CacheEntry *e, const uint8 *hash, const TokenRequest *req)
{
	return e->used &&
		memcmp(e->token_hash, hash, PG_OAUTH_TOKEN_HASH_LEN) == 0 &&
		strcmp(e->role, req->role) == 0 &&
		strcmp(e->database, req->database) == 0 &&
		strcmp(e->client_addr, req->client_addr ? req->client_addr : "") == 0 &&
		e->ssl == req->ssl;
}

/* A palloc'd copy of the string at *p; *p moves past it. */
static char *
next_string(const char **p)
{
	char	   *s = pstrdup(*p);

	*p += strlen(s) + 1;
	return s;
}

/* Append s and its NUL at *p; *p moves past it. */
static void
put_string(char **p, const char *s)
{
	size_t		len = strlen(s) + 1;

	memcpy(*p, s, len);
	*p += len;
}

/*
 * A still-valid cached decision for this request (hash: decision_cache_hash
 * of its token), copied into *out with palloc'd strings; false when none.
 */
bool
decision_cache_lookup(const TokenRequest *req, const uint8 *hash, TokenDecision *out)
{
	uint64		version,
				epoch;
	TimestampTz now;
	uint32		start;
	int			i;
	bool		hit = false;
	const char *p;

	if (!cache_usable())
		return false;

	version = pg_atomic_read_u64(&pg_oauth_shared->config_version);
	epoch = pg_atomic_read_u64(&cache->key_epoch);
	now = GetCurrentTimestamp();
	start = bucket_of(hash);

	LWLockAcquire(cache->lock, LW_SHARED);
	for (i = 0; i < CACHE_PROBE; i++)
	{
		CacheEntry *e = &cache->entries[(start + i) % CACHE_ENTRIES];

		if (!entry_matches(e, hash, req))
			continue;
		if (e->config_version != version || e->key_epoch != epoch || now >= e->expires_at)
			break;
		memset(out, 0, sizeof(*out));
		out->ok = true;
		pg_oauth_strlcpy_text(out->reason, "ok", sizeof(out->reason));
		pg_oauth_strlcpy_text(out->detail, "cached decision", sizeof(out->detail));
		p = e->data;
		out->issuer = next_string(&p);
		out->subject = e->has_subject ? next_string(&p) : NULL;
		out->token_id = e->has_token_id ? next_string(&p) : NULL;
		out->claims = next_string(&p);
		out->has_expires_at = true;
		out->expires_at = e->expires_at;
		out->allowed_roles = list_make1(pstrdup(e->granted));
		pg_oauth_strlcpy_text(out->kid, e->kid, sizeof(out->kid));
		pg_oauth_strlcpy_text(out->alg, e->alg, sizeof(out->alg));
		out->key_cache_hit = 1;
		out->max_sessions = e->max_sessions;
		out->validation_us = -1;
		out->queue_us = -1;
		out->from_cache = true;
		hit = true;
		break;
	}
	LWLockRelease(cache->lock);
	return hit;
}

/*
 * Remember an admitted decision.  version/epoch are the ones read before the
 * request was handed to a worker, so a change that raced with the validation
 * makes the entry stale at once rather than wrongly fresh.
 */
void
decision_cache_store(const TokenRequest *req, const uint8 *hash,
					 const TokenDecision *d, uint64 version, uint64 epoch)
{
	uint32		start;
	CacheEntry *slot = NULL;
	Size		size;
	char	   *p;
	int			i;

	if (!cache_usable() || !d->ok || !d->has_expires_at || d->issuer == NULL ||
		d->claims == NULL)
		return;
	/* a request without a role is admitted as the token's one role */
	if (req->role[0] == '\0' && list_length(d->allowed_roles) != 1)
		return;
	size = strlen(d->issuer) + 1 + strlen(d->claims) + 1 +
		(d->subject ? strlen(d->subject) + 1 : 0) +
		(d->token_id ? strlen(d->token_id) + 1 : 0);
	if (size > CACHE_DATA_MAX)
		return;

	start = bucket_of(hash);
	LWLockAcquire(cache->lock, LW_EXCLUSIVE);
	for (i = 0; i < CACHE_PROBE; i++)
	{
		CacheEntry *e = &cache->entries[(start + i) % CACHE_ENTRIES];

		if (entry_matches(e, hash, req) || !e->used)
		{
			slot = e;
			break;
		}
		if (slot == NULL || e->stored_at < slot->stored_at)
			slot = e;
	}
	memset(slot, 0, sizeof(*slot));
	slot->used = true;
	memcpy(slot->token_hash, hash, PG_OAUTH_TOKEN_HASH_LEN);
	pg_oauth_strlcpy_text(slot->role, req->role, sizeof(slot->role));
	pg_oauth_strlcpy_text(slot->granted,
						  req->role[0] != '\0' ? req->role : (const char *) linitial(d->allowed_roles),
						  sizeof(slot->granted));
	pg_oauth_strlcpy_text(slot->database, req->database, sizeof(slot->database));
	pg_oauth_strlcpy_text(slot->client_addr, req->client_addr ? req->client_addr : "", sizeof(slot->client_addr));
	slot->ssl = req->ssl;
	slot->config_version = version;
	slot->key_epoch = epoch;
	slot->expires_at = d->expires_at;
	slot->stored_at = GetCurrentTimestamp();
	slot->max_sessions = d->max_sessions;
	pg_oauth_strlcpy_text(slot->kid, d->kid, sizeof(slot->kid));
	pg_oauth_strlcpy_text(slot->alg, d->alg, sizeof(slot->alg));
	slot->has_subject = d->subject != NULL;
	slot->has_token_id = d->token_id != NULL;
	p = slot->data;
	put_string(&p, d->issuer);
	if (d->subject)
		put_string(&p, d->subject);
	if (d->token_id)
		put_string(&p, d->token_id);
	put_string(&p, d->claims);
	LWLockRelease(cache->lock);
}

/* The two counters a lookup/store pair must agree on. */
void
decision_cache_versions(uint64 *version, uint64 *epoch)
{
	*version = pg_oauth_shared ? pg_atomic_read_u64(&pg_oauth_shared->config_version) : 0;
	*epoch = cache ? pg_atomic_read_u64(&cache->key_epoch) : 0;
}
