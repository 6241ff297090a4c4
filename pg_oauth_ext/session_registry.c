/*-------------------------------------------------------------------------
 *
 * session_registry.c
 *	  Every live token session in shared memory: the oauth.sessions view,
 *	  per-subject connection limits, ending sessions whose token expired or
 *	  was revoked, and the clear FATAL those sessions get.
 *
 * Entries are indexed by backend id, so a backend finds its own without a
 * search.  Sessions are ended by the housekeeper worker (expiry) or by
 * oauth.revoke() with SIGTERM; the backend's emit_log_hook turns the
 * generic "terminating connection" FATAL into one that says why.
 * Identities are compared by hash, their text kept apart (identity_store.c),
 * so that they match whole whatever their length.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "replication/walsender.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_sessions);
PG_FUNCTION_INFO_V1(pg_oauth_fn_end_sessions);

typedef enum SessionEnd
{
	SESSION_LIVE = 0,
	SESSION_END_EXPIRED,
	SESSION_END_REVOKED
} SessionEnd;

typedef struct SessionEntry
{
	pid_t		pid;			/* 0: free */
	PGPROC	   *proc;
	SessionEnd	end;			/* set by whoever ends the session */
	bool		walsender;		/* a replication connection: never "idle" */
	TimestampTz login_time;
	bool		has_expires_at;
	TimestampTz expires_at;
	char		role[NAMEDATALEN];
	char		database[NAMEDATALEN];
	char		client_addr[64];
	IdentityHash identity;		/* what limits and revocations compare */
	bool		has_issued_at;	/* the token had an iat */
	TimestampTz issued_at;		/* what an issued_before revocation compares */
	dsa_pointer identity_text;	/* freed by the entry's backend; invalid: not kept */
} SessionEntry;

typedef struct SessionRegistry
{
	LWLock	   *lock;
	int			nentries;
	SessionEntry entries[FLEXIBLE_ARRAY_MEMBER];
} SessionRegistry;

static SessionRegistry *registry = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;
static int	my_entry = -1;
static bool exit_callback_registered = false;

/*
 * Revocations of this transaction, whose sessions end when it commits.  Each
 * remembers the (sub)transaction nesting level that made it: a ROLLBACK TO
 * SAVEPOINT drops what was revoked after the savepoint.
 */
typedef struct PendingEnd
{
	IdentityHash revoked;
	bool		has_issued_before;
	TimestampTz issued_before;
	int			nest_level;
} PendingEnd;

static List *pending_ends = NIL;
static bool subxact_callback_registered = false;

static void pending_ends_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
										  SubTransactionId parentSubid, void *arg);

Size
session_registry_shmem_size(void)
{
	return add_size(offsetof(SessionRegistry, entries),
					mul_size(MaxBackends, sizeof(SessionEntry)));
}

void
session_registry_shmem_startup(void)
{
	bool		found;

	registry = ShmemInitStruct("pg_oauth sessions", session_registry_shmem_size(), &found);
	if (!found)
	{
		memset(registry, 0, session_registry_shmem_size());
		registry->lock = pg_oauth_lock(PG_OAUTH_LOCK_SESSIONS);
		registry->nentries = MaxBackends;
	}
}

/*
 * The token's iat from the decision's claims (pyhook has checked it is a
 * number within years 1-9999), false when it has none.
 */
static bool
decision_issued_at(const TokenDecision *decision, TimestampTz *issued_at)
{
	Jsonb	   *claims;
	JsonbValue	v;
	float8		seconds;

	if (decision->claims == NULL)
		return false;
	claims = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(decision->claims)));
	if (!JB_ROOT_IS_OBJECT(claims) ||
		getKeyJsonValueFromContainer(&claims->root, "iat", 3, &v) == NULL ||
		v.type != jbvNumeric)
		return false;
	seconds = DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v.val.numeric)));
	/* outside what a timestamptz holds: no moment to compare (pyhook refuses it anyway) */
	if (!(seconds > -210866803200.0 && seconds < 253402300800.0))
		return false;
	*issued_at = (TimestampTz) ((seconds - ((POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY))
								* USECS_PER_SEC);
	return true;
}

/* Take this backend's entry out of the registry (it is not a session, or no more). */
void
session_registry_leave(void)
{
	dsa_pointer text = InvalidDsaPointer;

	if (my_entry < 0 || registry == NULL)
		return;
	LWLockAcquire(registry->lock, LW_EXCLUSIVE);
	if (registry->entries[my_entry].pid == MyProcPid)
	{
		text = registry->entries[my_entry].identity_text;
		memset(&registry->entries[my_entry], 0, sizeof(SessionEntry));
	}
	LWLockRelease(registry->lock);
	my_entry = -1;
	/* readers copy the text under the lock: nobody can be reading it now */
	identity_text_free(text);
}

static void
registry_exit_callback(int code, Datum arg)
{
	session_registry_leave();
}

/*
 * Enter this backend's token session, unless its subject already has
 * max_sessions live sessions with the same issuer (max_sessions < 0: no
 * limit).  Counting and entering happen under one lock, so concurrent logins
 * cannot both slip under the limit.  Returns the number of live sessions of
 * the subject when refused, -1 when entered.
 */
int
session_registry_enter(const TokenDecision *decision, const char *role,
					   const char *database, const char *client_addr)
{
	SessionEntry *e;
	IdentityHash identity;
	IdentityHash subject;
	dsa_pointer text;
	bool		has_issued_at;
	TimestampTz issued_at = 0;
	int			live = 0;
	int			i;

	if (registry == NULL || PGO_MY_SLOT() < 0 || PGO_MY_SLOT() >= registry->nentries)
		return -1;

	identity_hash(decision->issuer, decision->subject, decision->token_id, &identity);
	/* the limit counts sessions of this issuer and subject, whatever their token */
	subject = identity;
	subject.present &= ~IDENTITY_TOKEN_ID;
	has_issued_at = decision_issued_at(decision, &issued_at);
	/* stored before the lock is taken: it may have to map shared memory */
	text = identity_text_store(decision->issuer, decision->subject, decision->token_id);

	LWLockAcquire(registry->lock, LW_EXCLUSIVE);
	if (decision->max_sessions >= 0 && decision->subject != NULL && decision->issuer != NULL)
	{
		for (i = 0; i < registry->nentries; i++)
		{
			SessionEntry *o = &registry->entries[i];

			if (o->pid != 0 && o->end == SESSION_LIVE && identity_matches(&o->identity, &subject))
				live++;
		}
		if (live >= decision->max_sessions)
		{
			LWLockRelease(registry->lock);
			identity_text_free(text);
			return live;
		}
	}

	my_entry = PGO_MY_SLOT();
	e = &registry->entries[my_entry];
	memset(e, 0, sizeof(*e));
	e->pid = MyProcPid;
	e->proc = MyProc;
	e->walsender = am_walsender;
	e->login_time = GetCurrentTimestamp();
	e->has_expires_at = decision->has_expires_at;
	e->expires_at = decision->expires_at;
	pg_oauth_strlcpy_text(e->role, role, sizeof(e->role));
	pg_oauth_strlcpy_text(e->database, database, sizeof(e->database));
	pg_oauth_strlcpy_text(e->client_addr, client_addr ? client_addr : "", sizeof(e->client_addr));
	e->identity = identity;
	e->has_issued_at = has_issued_at;
	e->issued_at = issued_at;
	e->identity_text = text;
	LWLockRelease(registry->lock);

	if (!exit_callback_registered)
	{
		before_shmem_exit(registry_exit_callback, (Datum) 0);
		exit_callback_registered = true;
	}
	return -1;
}

/* Mark and signal one session (lock held exclusively). */
static void
end_session_locked(SessionEntry *e, SessionEnd why)
{
	e->end = why;
	/* die() in the backend; our emit_log_hook words its FATAL */
	kill(e->pid, SIGTERM);
}

/*
 * Housekeeper: end token sessions whose token has expired (plus the grace).
 * In "idle" mode only sessions waiting for the client's next command.
 * Returns how many were ended.
 */
int
session_registry_end_expired(int mode, int grace_s)
{
	TimestampTz now = GetCurrentTimestamp();
	int			ended = 0;
	int			i;

	if (registry == NULL || mode == SESSION_EXPIRY_OFF)
		return 0;

	LWLockAcquire(registry->lock, LW_EXCLUSIVE);
	for (i = 0; i < registry->nentries; i++)
	{
		SessionEntry *e = &registry->entries[i];

		if (e->pid == 0 || e->end != SESSION_LIVE || !e->has_expires_at)
			continue;
		if (now < TimestampTzPlusMilliseconds(e->expires_at, (int64) grace_s * 1000))
			continue;
		/* a walsender streams without ever waiting for a command */
		if (mode == SESSION_EXPIRY_IDLE && !e->walsender &&
			((volatile PGPROC *) e->proc)->wait_event_info != WAIT_EVENT_CLIENT_READ)
			continue;
		end_session_locked(e, SESSION_END_EXPIRED);
		ended++;
	}
	LWLockRelease(registry->lock);
	return ended;
}

/*
 * How many live sessions a revocation covers; end them too when "end".  With
 * issued_before, a session whose token was issued at or after it is not
 * covered; one whose token had no iat is (fail closed, as at login).
 */
static int
sessions_covered(const IdentityHash *revoked, bool has_issued_before,
				 TimestampTz issued_before, bool end)
{
	int			count = 0;
	int			i;

	LWLockAcquire(registry->lock, end ? LW_EXCLUSIVE : LW_SHARED);
	for (i = 0; i < registry->nentries; i++)
	{
		SessionEntry *e = &registry->entries[i];

		if (e->pid == 0 || e->end != SESSION_LIVE || !identity_matches(&e->identity, revoked))
			continue;
		if (has_issued_before && e->has_issued_at && e->issued_at >= issued_before)
			continue;
		if (end)
			end_session_locked(e, SESSION_END_REVOKED);
		count++;
	}
	LWLockRelease(registry->lock);
	return count;
}

/*
 * The live sessions a revocation covers (NULL arguments match anything, but
 * one of issuer, subject and token id must be given; issued_before, the
 * fourth argument that 1.0's SQL does not pass, limits it to tokens issued
 * before that moment): counted now, ended when the transaction
 * commits, after the configuration version has moved (session_state.c).  A
 * login checked before the revocation was visible either is in the registry
 * by then, or sees the new version after entering it and is checked again
 * (auth_hook.c): none slips between the two.
 */
Datum
pg_oauth_fn_end_sessions(PG_FUNCTION_ARGS)
{
	char	   *issuer = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *subject = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *token_id = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	bool		has_issued_before = PG_NARGS() > 3 && !PG_ARGISNULL(3);
	PendingEnd *pending;
	MemoryContext old;

	if (issuer == NULL && subject == NULL && token_id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a revocation needs an issuer, a subject or a token id")));
	if (registry == NULL)
		PG_RETURN_INT32(0);

	if (!subxact_callback_registered)
	{
		RegisterSubXactCallback(pending_ends_subxact_callback, NULL);
		subxact_callback_registered = true;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	pending = palloc(sizeof(PendingEnd));
	identity_hash(issuer, subject, token_id, &pending->revoked);
	pending->has_issued_before = has_issued_before;
	pending->issued_before = has_issued_before ? PG_GETARG_TIMESTAMPTZ(3) : 0;
	pending->nest_level = GetCurrentTransactionNestLevel();
	pending_ends = lappend(pending_ends, pending);
	MemoryContextSwitchTo(old);
	pg_oauth_note_config_change();
	PG_RETURN_INT32(sessions_covered(&pending->revoked, pending->has_issued_before,
									 pending->issued_before, false));
}

/*
 * A subtransaction's revocations belong to its parent when it commits, and
 * are forgotten when it aborts: their rows are gone, so are their ends.
 */
static void
pending_ends_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, pending_ends)
		{
			PendingEnd *p = (PendingEnd *) lfirst(lc);

			if (p->nest_level >= level)
				p->nest_level = level - 1;
		}
	}
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, pending_ends)
		{
			PendingEnd *p = (PendingEnd *) lfirst(lc);

			if (p->nest_level >= level)
			{
				pending_ends = foreach_delete_current(pending_ends, lc);
				pfree(p);
			}
		}
	}
}

/* At the end of a transaction that revoked: end the sessions (commit) or not. */
void
session_registry_end_pending(bool commit)
{
	ListCell   *lc;

	foreach(lc, pending_ends)
	{
		PendingEnd *p = (PendingEnd *) lfirst(lc);

		if (commit && registry != NULL)
			(void) sessions_covered(&p->revoked, p->has_issued_before, p->issued_before, true);
		pfree(lfirst(lc));
	}
	list_free(pending_ends);
	pending_ends = NIL;
}

/*
 * End the live sessions a revocation covers, now: for a revocation this
 * process did not commit (a standby's housekeeper, after replay).
 */
int
session_registry_end_covered(const char *issuer, const char *subject, const char *token_id,
							 bool has_issued_before, TimestampTz issued_before)
{
	IdentityHash revoked;

	if (registry == NULL)
		return 0;
	identity_hash(issuer, subject, token_id, &revoked);
	return sessions_covered(&revoked, has_issued_before, issued_before, true);
}

Datum
pg_oauth_fn_sessions(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	if (registry == NULL)
		return (Datum) 0;

	for (i = 0; i < registry->nentries; i++)
	{
		SessionEntry e;
		char	   *issuer = NULL;
		char	   *subject = NULL;
		char	   *token_id = NULL;
		Datum		values[10];
		bool		nulls[10];

		LWLockAcquire(registry->lock, LW_SHARED);
		e = registry->entries[i];
		/* the text is freed when the session ends: copy it under the lock */
		if (e.pid != 0)
			identity_text_fetch(e.identity_text, &issuer, &subject, &token_id);
		LWLockRelease(registry->lock);
		if (e.pid == 0)
			continue;

		/* an identity whose text found no room shows as NULL */
		memset(nulls, false, sizeof(nulls));
		values[0] = Int32GetDatum(e.pid);
		values[1] = CStringGetTextDatum(e.role);
		values[2] = CStringGetTextDatum(e.database);
		values[3] = issuer ? CStringGetTextDatum(issuer) : (Datum) 0;
		nulls[3] = (issuer == NULL);
		values[4] = subject ? CStringGetTextDatum(subject) : (Datum) 0;
		nulls[4] = (subject == NULL);
		values[5] = token_id ? CStringGetTextDatum(token_id) : (Datum) 0;
		nulls[5] = (token_id == NULL);
		values[6] = TimestampTzGetDatum(e.expires_at);
		nulls[6] = !e.has_expires_at;
		if (e.client_addr[0] != '\0')
			values[7] = DirectFunctionCall1(inet_in, CStringGetDatum(e.client_addr));
		else
			nulls[7] = true;
		values[8] = TimestampTzGetDatum(e.login_time);
		values[9] = CStringGetTextDatum(e.end == SESSION_LIVE ? "live" :
										e.end == SESSION_END_EXPIRED ? "ending: expired" :
										"ending: revoked");
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * die() reports "terminating connection due to administrator command"; for a
 * session we ended, say why instead, so the client reads a clear FATAL.
 */
static void
session_emit_log_hook(ErrorData *edata)
{
	if (my_entry >= 0 && registry != NULL &&
		edata->elevel == FATAL && edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
	{
		SessionEnd	why = registry->entries[my_entry].end;

		if (why != SESSION_LIVE)
		{
			edata->sqlerrcode = ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
			edata->message = pstrdup(why == SESSION_END_EXPIRED ?
									 "pg_oauth: session ended: its token expired" :
									 "pg_oauth: session ended: its token was revoked");
			edata->detail = pstrdup(why == SESSION_END_EXPIRED ?
									"reason=expired" : "reason=revoked");
			edata->hint = pstrdup("Log in again with a fresh token.");
		}
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
session_registry_install_hooks(void)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = session_emit_log_hook;
}
