/*-------------------------------------------------------------------------
 *
 * identity_store.c
 *	  Issuer, subject and token id of any length in shared memory: their
 *	  SHA-256 hashes, kept inline wherever identities are compared, and
 *	  their full text in a DSA area, for the views, the audit table and the
 *	  log.
 *
 * Identities are as long as the token allows: GitHub Actions and Kubernetes
 * subjects often pass 255 bytes.  Fixed-size copies cut them, and a cut
 * identity compares wrongly: a subject escaped its session limit and its
 * revocation.  Hashes compare whole identities in fixed space, and need no
 * text: when the area is full a session is still limited and revocable, only
 * its text shows as NULL (and the housekeeper says so once).
 *
 * The area starts in place in the main shared memory segment, as
 * PostgreSQL's shared memory statistics do (pgstat_shmem.c), and grows in
 * DSM segments up to pg_oauth.identity_memory.  The postmaster creates it
 * and never touches it again; other processes attach on first use.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

/* Up to this much of pg_oauth.identity_memory lives in the main segment. */
#define IDENTITY_IN_PLACE_MAX	(512 * 1024)

typedef struct IdentityStore
{
	int			tranche_id;		/* the area's LWLocks */
	pg_atomic_uint64 not_kept;	/* texts that found no room */
	slock_t		mutex;			/* protects last_error */
	char		last_error[128];	/* why the last one did not fit */
	/* the area's first segment follows, MAXALIGNed */
} IdentityStore;

/* One identity's text: the parts present, each NUL-terminated, in order. */
typedef struct IdentityText
{
	uint8		present;		/* IDENTITY_* bits */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} IdentityText;

static IdentityStore *store = NULL;
static dsa_area *area = NULL;

static Size
in_place_size(void)
{
	return Min((Size) pg_oauth_identity_memory * 1024, IDENTITY_IN_PLACE_MAX);
}

static void *
area_place(void)
{
	return (char *) store + MAXALIGN(sizeof(IdentityStore));
}

Size
identity_store_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(IdentityStore)), in_place_size());
}

void
identity_store_shmem_startup(void)
{
	bool		found;

	store = ShmemInitStruct("pg_oauth identities", identity_store_shmem_size(), &found);
	if (!found)
	{
		dsa_area   *created;

		/* 19 names a tranche once, in shared memory, for every process */
#if PG_VERSION_NUM >= 190000
		store->tranche_id = LWLockNewTrancheId("pg_oauth identities");
#else
		store->tranche_id = LWLockNewTrancheId();
		LWLockRegisterTranche(store->tranche_id, "pg_oauth identities");
#endif
		pg_atomic_init_u64(&store->not_kept, 0);
		SpinLockInit(&store->mutex);
		store->last_error[0] = '\0';

		/* The postmaster cannot use DSM segments: it only sets the area up. */
		created = dsa_create_in_place(area_place(), in_place_size(),
									  store->tranche_id, NULL);
		dsa_pin(created);
		dsa_set_size_limit(created, (size_t) pg_oauth_identity_memory * 1024);
		dsa_detach(created);
	}
#if PG_VERSION_NUM < 190000
	else
		LWLockRegisterTranche(store->tranche_id, "pg_oauth identities");
#endif
}

/*
 * Run step(arg), which works on the area, catching an ERROR from inside
 * dsa.c: a DSM segment that cannot be created or mapped (/dev/shm full, too
 * many segments) or out of memory.  What a transaction abort would do is
 * done here: the area's LWLocks, held only inside dsa.c, are released, so
 * callers must hold no LWLock.  Segments are mapped under no resource owner:
 * the mapping is pinned for the life of the process anyway.  Returns false
 * when step failed, having recorded why.
 */
static bool
guarded(void (*step) (void *), void *arg)
{
	ResourceOwner owner = CurrentResourceOwner;
	MemoryContext context = CurrentMemoryContext;
	uint32		holdoff = InterruptHoldoffCount;
	uint32		cancel_holdoff = QueryCancelHoldoffCount;
	volatile bool ok = true;

	CurrentResourceOwner = NULL;
	PG_TRY();
	{
		step(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		LWLockReleaseAll();
		/* errfinish zeroed these for the handler; ours were as before */
		InterruptHoldoffCount = holdoff;
		QueryCancelHoldoffCount = cancel_holdoff;
		MemoryContextSwitchTo(context);
		edata = CopyErrorData();
		FlushErrorState();
		SpinLockAcquire(&store->mutex);
		pg_oauth_strlcpy_text(store->last_error, edata->message, sizeof(store->last_error));
		SpinLockRelease(&store->mutex);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	CurrentResourceOwner = owner;
	return ok;
}

/* Attach this process to the area (may raise an ERROR). */
static void
attach_step(void *arg)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	dsa_area   *a = dsa_attach_in_place(area_place(), NULL);

	dsa_pin_mapping(a);
	MemoryContextSwitchTo(old);
	/* an in-place area counts its users: give ours back at exit */
	on_shmem_exit(dsa_on_shmem_exit_release_in_place, PointerGetDatum(area_place()));
	area = a;
}

/*
 * Attach on first use.  may_raise: let an ERROR through (the caller may
 * hold an LWLock; a SQL function's abort releases it); otherwise false when
 * it failed.
 */
static bool
attached(bool may_raise)
{
	if (area != NULL)
		return true;
	if (store == NULL)
		return false;
	if (may_raise)
	{
		attach_step(NULL);
		return true;
	}
	return guarded(attach_step, NULL);
}

/* The hashes of an identity's parts; a NULL part is absent. */
void
identity_hash(const char *issuer, const char *subject, const char *token_id,
			  IdentityHash *out)
{
	memset(out, 0, sizeof(*out));
	if (issuer != NULL)
	{
		out->present |= IDENTITY_ISSUER;
		pg_oauth_sha256(issuer, strlen(issuer), out->issuer);
	}
	if (subject != NULL)
	{
		out->present |= IDENTITY_SUBJECT;
		pg_oauth_sha256(subject, strlen(subject), out->subject);
	}
	if (token_id != NULL)
	{
		out->present |= IDENTITY_TOKEN_ID;
		pg_oauth_sha256(token_id, strlen(token_id), out->token_id);
	}
}

/* Does have hold every part of want, each equal? */
bool
identity_matches(const IdentityHash *have, const IdentityHash *want)
{
	if ((have->present & want->present) != want->present)
		return false;
	if ((want->present & IDENTITY_ISSUER) &&
		memcmp(have->issuer, want->issuer, PG_OAUTH_TOKEN_HASH_LEN) != 0)
		return false;
	if ((want->present & IDENTITY_SUBJECT) &&
		memcmp(have->subject, want->subject, PG_OAUTH_TOKEN_HASH_LEN) != 0)
		return false;
	if ((want->present & IDENTITY_TOKEN_ID) &&
		memcmp(have->token_id, want->token_id, PG_OAUTH_TOKEN_HASH_LEN) != 0)
		return false;
	return true;
}

typedef struct StoreCall
{
	const char *parts[3];
	Size		size;
	dsa_pointer dp;
} StoreCall;

static void
store_step(void *arg)
{
	StoreCall  *call = (StoreCall *) arg;
	IdentityText *text;
	char	   *p;
	int			i;

	call->dp = dsa_allocate_extended(area, call->size, DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(call->dp))
		return;
	text = dsa_get_address(area, call->dp);
	text->present = 0;
	p = text->data;
	for (i = 0; i < 3; i++)
	{
		size_t		len;

		if (call->parts[i] == NULL)
			continue;
		text->present |= (1 << i);
		len = strlen(call->parts[i]) + 1;
		memcpy(p, call->parts[i], len);
		p += len;
	}
}

static void
note_not_kept(const char *why)
{
	pg_atomic_fetch_add_u64(&store->not_kept, 1);
	if (why != NULL)
	{
		SpinLockAcquire(&store->mutex);
		pg_oauth_strlcpy_text(store->last_error, why, sizeof(store->last_error));
		SpinLockRelease(&store->mutex);
	}
}

/*
 * Keep the text of an identity (NULL parts are absent) in shared memory.
 * InvalidDsaPointer when all parts are NULL, or when there is no room (then
 * counted, for the housekeeper's warning).  The caller holds no LWLock.
 */
dsa_pointer
identity_text_store(const char *issuer, const char *subject, const char *token_id)
{
	StoreCall	call;
	int			i;

	call.parts[0] = issuer;
	call.parts[1] = subject;
	call.parts[2] = token_id;
	call.size = offsetof(IdentityText, data);
	call.dp = InvalidDsaPointer;
	for (i = 0; i < 3; i++)
		if (call.parts[i] != NULL)
			call.size = add_size(call.size, strlen(call.parts[i]) + 1);
	if (call.size == offsetof(IdentityText, data) || store == NULL)
		return InvalidDsaPointer;

	if (!attached(false) || !guarded(store_step, &call))
		note_not_kept(NULL);
	else if (!DsaPointerIsValid(call.dp))
		note_not_kept("pg_oauth.identity_memory is full");
	return call.dp;
}

/* The parts of a stored text, copied with palloc; NULL for absent ones. */
static void
copy_parts(const IdentityText *text, char **issuer, char **subject, char **token_id)
{
	char	  **out[3] = {issuer, subject, token_id};
	const char *p = text->data;
	int			i;

	for (i = 0; i < 3; i++)
	{
		if (out[i] != NULL)
			*out[i] = NULL;
		if ((text->present & (1 << i)) == 0)
			continue;
		if (out[i] != NULL)
			*out[i] = pstrdup(p);
		p += strlen(p) + 1;
	}
}

/*
 * The text of an identity, copied with palloc; parts NULL when absent or not
 * kept (dp invalid).  The caller must keep dp from being freed meanwhile
 * (hold the lock its owner frees it under).  May raise an ERROR, if a DSM
 * segment cannot be mapped: for SQL functions.
 */
void
identity_text_fetch(dsa_pointer dp, char **issuer, char **subject, char **token_id)
{
	static const IdentityText none = {0};

	if (!DsaPointerIsValid(dp) || !attached(true))
	{
		copy_parts(&none, issuer, subject, token_id);
		return;
	}
	copy_parts(dsa_get_address(area, dp), issuer, subject, token_id);
}

static void
free_step(void *arg)
{
	dsa_free(area, *(dsa_pointer *) arg);
}

/* Free a text nobody else can reach any more.  The caller holds no LWLock. */
void
identity_text_free(dsa_pointer dp)
{
	if (DsaPointerIsValid(dp) && attached(false))
		(void) guarded(free_step, &dp);
}

typedef struct TakeCall
{
	dsa_pointer dp;
	char	  **issuer;
	char	  **subject;
	char	  **token_id;
} TakeCall;

static void
take_step(void *arg)
{
	TakeCall   *call = (TakeCall *) arg;

	copy_parts(dsa_get_address(area, call->dp), call->issuer, call->subject, call->token_id);
	dsa_free(area, call->dp);
}

/*
 * identity_text_fetch and identity_text_free in one, for the only holder of
 * dp, never raising an ERROR (parts NULL if it could not be read).  The
 * caller holds no LWLock.
 */
void
identity_text_take(dsa_pointer dp, char **issuer, char **subject, char **token_id)
{
	TakeCall	call = {dp, issuer, subject, token_id};
	static const IdentityText none = {0};

	copy_parts(&none, issuer, subject, token_id);
	if (DsaPointerIsValid(dp) && attached(false) && !guarded(take_step, &call))
		copy_parts(&none, issuer, subject, token_id);
}

/* How many texts found no room since the server started, and the last reason. */
uint64
identity_store_not_kept(char *why, size_t whylen)
{
	if (store == NULL)
		return 0;
	SpinLockAcquire(&store->mutex);
	strlcpy(why, store->last_error, whylen);
	SpinLockRelease(&store->mutex);
	return pg_atomic_read_u64(&store->not_kept);
}
