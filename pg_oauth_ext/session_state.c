/*-------------------------------------------------------------------------
 *
 * session_state.c
 *	  What a token login leaves behind in its backend (claims, issuer,
 *	  subject, expiry), or oauth.authenticate() for one transaction, and
 *	  oauth.claims() and oauth.session(), which read it whole.
 *
 * The hook runs inside the startup transaction, so what the session keeps is
 * copied out of its memory here.  oauth.claim() and its kin, which read one
 * claim by path, are in claim_path.c.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/htup_details.h"
#include "access/parallel.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_claims);
PG_FUNCTION_INFO_V1(pg_oauth_fn_session);

OAuthSession pg_oauth_session = {false};

/* The session's claims parsed once, in TopMemoryContext; NULL until first use. */
static Jsonb *session_claims_jsonb = NULL;
/* bumped whenever the claims are set: the claim functions' caches are then stale */
static uint64 claims_generation = 0;

static char *
top_strdup(const char *s)
{
	return s ? MemoryContextStrdup(TopMemoryContext, s) : NULL;
}

/*
 * A decision's identity and claims, copied to TopMemoryContext: the hook runs
 * inside the startup transaction, and oauth.authenticate() inside a
 * statement, whose memory dies first.
 */
static void
keep_decision(const TokenDecision *decision, const char *role)
{
	pg_oauth_session.issuer = top_strdup(decision->issuer);
	pg_oauth_session.subject = top_strdup(decision->subject);
	pg_oauth_session.token_id = top_strdup(decision->token_id);
	pg_oauth_session.claims = top_strdup(decision->claims);
	pg_oauth_session.role = top_strdup(role);
	pg_oauth_session.has_expires_at = decision->has_expires_at;
	pg_oauth_session.expires_at = decision->expires_at;
	pg_oauth_session.active = true;
	claims_generation++;
}

/* The identity a decision gives, its strings still the decision's. */
static OAuthSession
decision_identity(const TokenDecision *decision, const char *role)
{
	OAuthSession s = {0};

	s.active = true;
	s.issuer = decision->issuer;
	s.subject = decision->subject;
	s.token_id = decision->token_id;
	s.claims = decision->claims;
	s.role = (char *) role;
	s.has_expires_at = decision->has_expires_at;
	s.expires_at = decision->expires_at;
	return s;
}

void
session_state_remember(const TokenDecision *decision, const char *role)
{
	OAuthSession s = decision_identity(decision, role);

	/* first: an error here refuses the login before anything is kept */
	parallel_identity_publish_login(&s);
	keep_decision(decision, role);
	if (session_claims_jsonb != NULL)
		pfree(session_claims_jsonb);
	session_claims_jsonb = NULL;
}

/*
 * oauth.authenticate() (transaction_identity.c): for the rest of the
 * transaction the claim functions answer for that token.  What the session's
 * own login left (a gateway normally has none) is set aside and comes back
 * when the transaction ends.
 */
static OAuthSession login_session;
static Jsonb *login_claims_jsonb = NULL;
static bool in_transaction_identity = false;

void
session_state_enter_transaction(const TokenDecision *decision, const char *role)
{
	OAuthSession s = decision_identity(decision, role);

	Assert(!in_transaction_identity);
	/* first: an error here fails oauth.authenticate() with nothing changed */
	parallel_identity_publish_transaction(&s);
	login_session = pg_oauth_session;
	login_claims_jsonb = session_claims_jsonb;
	session_claims_jsonb = NULL;
	in_transaction_identity = true;
	keep_decision(decision, role);
}

static void
free_if(void *p)
{
	if (p != NULL)
		pfree(p);
}

/* The transaction ended (COMMIT, ROLLBACK, or a failure): its identity goes. */
void
session_state_leave_transaction(void)
{
	if (!in_transaction_identity)
		return;
	free_if(pg_oauth_session.issuer);
	free_if(pg_oauth_session.subject);
	free_if(pg_oauth_session.token_id);
	free_if(pg_oauth_session.claims);
	free_if(pg_oauth_session.role);
	free_if(session_claims_jsonb);
	pg_oauth_session = login_session;
	session_claims_jsonb = login_claims_jsonb;
	login_claims_jsonb = NULL;
	in_transaction_identity = false;
	claims_generation++;
	parallel_identity_end_transaction();
}

/*
 * A parallel worker takes its leader's identity (parallel_identity.c), or
 * none: s points into memory the GUC machinery keeps while it is current.
 */
void
session_state_adopt(const OAuthSession *s)
{
	Assert(IsParallelWorker());
	if (s != NULL)
		pg_oauth_session = *s;
	else
		memset(&pg_oauth_session, 0, sizeof(pg_oauth_session));
	if (session_claims_jsonb != NULL)
		pfree(session_claims_jsonb);
	session_claims_jsonb = NULL;
	claims_generation++;
}

/* Moves whenever the claims are set: what was read from them before is stale. */
uint64
session_state_claims_generation(void)
{
	return claims_generation;
}

/*
 * The claims as jsonb, parsed on first use and kept until they change (a
 * login's never do; oauth.authenticate()'s end with the transaction): RLS
 * policies call claim() once per row.
 */
Jsonb *
session_state_claims(void)
{
	if (!pg_oauth_session.active || pg_oauth_session.claims == NULL)
		return NULL;
	if (session_claims_jsonb == NULL)
	{
		Jsonb	   *parsed;
		Jsonb	   *kept;

		parsed = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
													CStringGetDatum(pg_oauth_session.claims)));
		kept = MemoryContextAlloc(TopMemoryContext, VARSIZE(parsed));
		memcpy(kept, parsed, VARSIZE(parsed));
		pfree(parsed);
		session_claims_jsonb = kept;
	}
	return session_claims_jsonb;
}

Datum
pg_oauth_fn_claims(PG_FUNCTION_ARGS)
{
	Jsonb	   *claims = session_state_claims();
	Jsonb	   *copy;

	if (claims == NULL)
		PG_RETURN_NULL();
	copy = palloc(VARSIZE(claims));
	memcpy(copy, claims, VARSIZE(claims));
	PG_RETURN_JSONB_P(copy);
}

Datum
pg_oauth_fn_session(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(nulls, true, sizeof(nulls));
	if (pg_oauth_session.active)
	{
		if (pg_oauth_session.issuer)
		{
			values[0] = CStringGetTextDatum(pg_oauth_session.issuer);
			nulls[0] = false;
		}
		if (pg_oauth_session.subject)
		{
			values[1] = CStringGetTextDatum(pg_oauth_session.subject);
			nulls[1] = false;
		}
		if (pg_oauth_session.token_id)
		{
			values[2] = CStringGetTextDatum(pg_oauth_session.token_id);
			nulls[2] = false;
		}
		if (pg_oauth_session.has_expires_at)
		{
			values[3] = TimestampTzGetDatum(pg_oauth_session.expires_at);
			nulls[3] = false;
		}
		if (pg_oauth_session.role)
		{
			values[4] = CStringGetTextDatum(pg_oauth_session.role);
			nulls[4] = false;
		}
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
