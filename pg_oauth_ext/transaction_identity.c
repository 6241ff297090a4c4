/*-------------------------------------------------------------------------
 *
 * transaction_identity.c
 *	  oauth.authenticate(token, role): behind a connection pooler, one token
 *	  per transaction.  The token is checked like a login's (auth_hook.c's
 *	  decide_token: the decision cache or a worker, role_map, the role
 *	  policy, revocations, the brake), and the rest of the transaction runs
 *	  as the role it admits, with its claims; COMMIT or ROLLBACK ends both.
 *
 * The role is taken the way SECURITY DEFINER functions take their owner's:
 * SetUserIdAndSecContext() with SECURITY_LOCAL_USERID_CHANGE.  While that
 * flag is set, PostgreSQL refuses to set "role" and "session_authorization"
 * from any source (set_config_option: GUC_NOT_WHILE_SEC_REST), which closes
 * SET ROLE, RESET ROLE, SET SESSION AUTHORIZATION, set_config('role', ...)
 * and a function's SET role clause at once; gateway.c refuses the statement
 * forms first with a clearer message.  The session user (the pooler's
 * gateway role) needs no membership in the role: nothing but a valid token
 * gets there.
 *
 * PostgreSQL puts the user back itself only when a transaction aborts; at a
 * commit nothing does, so the commit callback below must.  Before the
 * commit it also takes away what a transaction could leave to the next one
 * on the same server connection (the next client of the pooler): settings
 * made with SET or set_config(..., false), temporary objects, session
 * advisory locks, sequence values for currval(), statements prepared with
 * the protocol's Parse, and the seed of random().  gateway.c refuses the rest
 * (PREPARE, cursors WITH HOLD, LISTEN, LOAD) while a token identity is
 * active.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "common/pg_prng.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_authenticate);

typedef struct TransactionIdentity
{
	bool		active;
	Oid			roleid;
	char		role[NAMEDATALEN];
	uint8		token_hash[PG_OAUTH_TOKEN_HASH_LEN];
	/* who ran the transaction before: put back at its end */
	Oid			saved_userid;
	int			saved_sec_context;
} TransactionIdentity;

static TransactionIdentity identity;
/* inside oauth.authenticate(): its own statements pass the gateway's gate */
static bool calling = false;
/* the function's oid, once recognized (a re-created extension gives another) */
static Oid	authenticate_oid = InvalidOid;
static bool callbacks_registered = false;
/* where the seed of random() comes from after each transaction */
static pg_prng_state reseed_state;
static bool reseed_ready = false;

bool
transaction_identity_active(void)
{
	return identity.active;
}

bool
transaction_identity_calling(void)
{
	return calling;
}

/*
 * Is funcid oauth.authenticate()?  Recognized by what only a superuser can
 * create: a C function of this library with this symbol, whatever schema or
 * name it was given.
 */
bool
transaction_identity_function(Oid funcid)
{
	HeapTuple	tup;
	bool		ours = false;

	/* only gateway sessions ask, and before a token: a lookup is cheap enough */
	if (OidIsValid(authenticate_oid) && funcid == authenticate_oid)
		return true;
	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	if (!HeapTupleIsValid(tup))
		return false;
	if (((Form_pg_proc) GETSTRUCT(tup))->prolang == ClanguageId)
	{
		bool		isnull;
		Datum		src = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_prosrc, &isnull);
		Datum		bin;

		if (!isnull && strcmp(TextDatumGetCString(src), "pg_oauth_fn_authenticate") == 0)
		{
			bin = SysCacheGetAttr(PROCOID, tup, Anum_pg_proc_probin, &isnull);
			ours = !isnull && strcmp(TextDatumGetCString(bin), "$libdir/pg_oauth") == 0;
		}
	}
	ReleaseSysCache(tup);
	if (ours)
		authenticate_oid = funcid;
	return ours;
}

/* A session setting changed in this transaction goes back to its default. */
static void
take_away_session_state(void)
{
	Oid			temp_namespace,
				temp_toast_namespace;

	/* SET, set_config(..., false): like RESET ALL (the pins of gateway.c stay) */
	ResetAllOptions();
	/* temporary tables, views, functions...: like DISCARD TEMP */
	GetTempNamespaceState(&temp_namespace, &temp_toast_namespace);
	if (OidIsValid(temp_namespace))
		ResetTempTableNamespace();
}

/* Session-level leftovers that survive a rollback as well as a commit. */
static void
take_away_lasting_state(void)
{
	double		seed;

	/* pg_advisory_lock() without _xact_: held by the session, not the transaction */
	LockReleaseSession(USER_LOCKMETHOD);
	/* currval() and lastval() */
	ResetSequenceCaches();

	/*
	 * Statements prepared with the protocol's Parse (SQL PREPARE is refused):
	 * their text is the subject's query, and the next client could EXECUTE
	 * them.  A pooler that keeps prepared statements on its server
	 * connections (PgBouncer's max_prepared_statements) loses them here.
	 */
	DropAllPreparedStatements();
	/*
	 * setseed(): the next subject's random() must not be this one's choice.
	 * The new seed comes from a generator of this session's own, seeded from
	 * strong randomness once: no SQL can read or set its state.
	 */
	if (!reseed_ready)
	{
		if (!pg_prng_strong_seed(&reseed_state))
			pg_prng_seed(&reseed_state, (uint64) MyProcPid ^ (uint64) GetCurrentTimestamp());
		reseed_ready = true;
	}
	seed = pg_prng_double(&reseed_state) * 2.0 - 1.0;
	DirectFunctionCall1(setseed, Float8GetDatum(seed));
}

static void
end_identity(void)
{
	if (!identity.active)
		return;
	identity.active = false;
	SetUserIdAndSecContext(identity.saved_userid, identity.saved_sec_context);
	session_state_leave_transaction();
	take_away_lasting_state();
}

static void
transaction_identity_xact_callback(XactEvent event, void *arg)
{
	if (!identity.active)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			/* still in the transaction: catalog work commits with it */
			take_away_session_state();
			break;
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a transaction authenticated by oauth.authenticate() cannot be prepared"),
					 errdetail("Its token identity ends with the transaction.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			end_identity();
			break;
		default:
			break;
	}
}

static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(transaction_identity_xact_callback, NULL);
	callbacks_registered = true;
}

/* Refuse a call that could not keep the promise of the function. */
static void
check_call_context(void)
{
	if (!gateway_session())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("oauth.authenticate() runs only in a gateway session"),
				 errdetail("Role \"%s\" is not a gateway: pg_oauth.gateway is off for this session.",
						   GetUserNameFromId(GetSessionUserId(), false)),
				 errhint("A superuser marks the pooler's role: ALTER ROLE ... SET pg_oauth.gateway = on.")));
	if (!IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("oauth.authenticate() must run inside a transaction block"),
				 errdetail("The token's identity lasts until the transaction ends; alone, the statement would end it at once."),
				 errhint("BEGIN; SELECT oauth.authenticate($1); ...; COMMIT;")));
	if (GetCurrentTransactionNestLevel() > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("oauth.authenticate() cannot run inside a savepoint or an exception block"),
				 errdetail("Rolling back to the savepoint would leave the transaction's identity behind.")));
	if (InSecurityRestrictedOperation() || InLocalUserIdChange() ||
		GetUserId() != GetSessionUserId() || IsParallelWorker())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("oauth.authenticate() must be called directly by the gateway session"),
				 errdetail("It was called from a function that runs as another role, or from a restricted operation.")));
}

/*
 * The token's payload or signature in the statement text: log_statement,
 * log_min_error_statement, pg_stat_activity and pgaudit have it already.
 * pyhook's written_into() is the same test for oauth.explain().
 */
static bool
token_in_statement(const char *token, int len)
{
	const char *dot1 = memchr(token, '.', len);
	const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (dot1 + 1 - token)) : NULL;
	const char *parts[2];
	int			lens[2];
	int			i;

	if (debug_query_string == NULL || dot1 == NULL || dot2 == NULL)
		return false;
	parts[0] = dot1 + 1;
	lens[0] = dot2 - (dot1 + 1);
	parts[1] = dot2 + 1;
	lens[1] = len - (dot2 + 1 - token);
	for (i = 0; i < 2; i++)
	{
		char	   *part;
		bool		found;

		/* short parts (an empty signature) are no secret and match by chance */
		if (lens[i] < 16)
			continue;
		part = pnstrdup(parts[i], lens[i]);
		found = strstr(debug_query_string, part) != NULL;
		pfree(part);
		if (found)
			return true;
	}
	return false;
}

/*
 * oauth.authenticate(token text, role text DEFAULT NULL) RETURNS name
 *
 * The role the transaction now runs as.  Called again in the same
 * transaction with the same token and role it answers the same; with
 * anything else it refuses.
 */
Datum
pg_oauth_fn_authenticate(PG_FUNCTION_ARGS)
{
	text	   *token_text;
	char	   *token;
	int			token_len;
	size_t		presented;
	const char *role = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	uint8		hash[PG_OAUTH_TOKEN_HASH_LEN];
	TokenDecision decision;
	Oid			roleid;
	const char *granted;
	bool		in_statement;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("oauth.authenticate() needs a token")));
	token_text = PG_GETARG_TEXT_PP(0);
	presented = VARSIZE_ANY_EXHDR(token_text);
	/* a login's password packet never holds more than the ceiling either */
	/* text holds no NUL: the copy is exactly this long */
	token_len = (int) Min(presented, PG_OAUTH_TOKEN_CEILING);
	token = pnstrdup(VARDATA_ANY(token_text), token_len);
	pg_oauth_sha256(token, token_len, hash);

	if (identity.active)
	{
		/* the same token and role again: nothing changes */
		explicit_bzero(token, token_len);
		if (memcmp(hash, identity.token_hash, sizeof(hash)) == 0 &&
			(role == NULL || strcmp(role, identity.role) == 0))
			PG_RETURN_DATUM(DirectFunctionCall1(namein, CStringGetDatum(identity.role)));
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("this transaction is already authenticated as role \"%s\"", identity.role),
				 errdetail("A transaction carries one token identity; it ends with COMMIT or ROLLBACK."),
				 errhint("End the transaction before authenticating another token.")));
	}
	check_call_context();
	/* whatever the session SET since: nothing logs the token (gateway.c) */
	gateway_pin_logging();
	if (role != NULL && role[0] == '\0')
		role = NULL;

	register_callbacks();
	in_statement = token_in_statement(token, token_len);
	calling = true;
	PG_TRY();
	{
		/* wipes the token, success or not */
		token_transaction_decide(role, token, token_len, hash, presented,
								 in_statement, &decision, &roleid, &granted);
	}
	PG_FINALLY();
	{
		calling = false;
	}
	PG_END_TRY();

	identity.roleid = roleid;
	strlcpy(identity.role, granted, sizeof(identity.role));
	memcpy(identity.token_hash, hash, sizeof(hash));
	GetUserIdAndSecContext(&identity.saved_userid, &identity.saved_sec_context);
	session_state_enter_transaction(&decision, identity.role);
	identity.active = true;
	SetUserIdAndSecContext(roleid, identity.saved_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_RETURN_DATUM(DirectFunctionCall1(namein, CStringGetDatum(identity.role)));
}
