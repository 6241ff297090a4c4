/*-------------------------------------------------------------------------
 *
 * auth_hook.c
 *	  The ClientAuthentication hook: on every pg_hba "trust" line, ask the
 *	  client for a token as its password, have it validated, and refuse the
 *	  login unless the validator allows the requested role.
 *
 * The hook can only refuse (ereport FATAL); PostgreSQL sends
 * AuthenticationOk after it returns.  "trust" is the one method that lets an
 * extension see a cleartext password, so the hook asks for it itself.
 *
 * PostgreSQL 18's "oauth" method (SASL OAUTHBEARER) brings the token itself:
 * oauth_validator.c hands it to token_login_bearer(), which runs the same
 * checks and the same decision (decide_token) as a password login.
 *
 * This file keeps the hook and the decision; the parts of a login that
 * stand on their own live beside it: startup_options.c (the startup options
 * a token login refuses), password_packet.c (reading the token as a
 * PasswordMessage), bearer_identity.c (the identity and the issuer of an
 * OAUTHBEARER login) and trace.c (make TRACE=1's phase timings).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include <sys/socket.h>
#include <netdb.h>

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "common/ip.h"
#include "libpq/auth.h"
#include "libpq/hba.h"
#include "miscadmin.h"
#include "replication/walsender.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/syscache.h"

#ifdef ENABLE_GSS
#include "libpq/be-gssapi-common.h"
#endif

static ClientAuthentication_hook_type prev_client_auth_hook = NULL;

/*
 * Set by login_refuse() on an OAUTHBEARER attempt just before it raises the
 * ERROR that token_login_bearer() catches; with the sentence the client may
 * read.
 */
static bool bearer_refused = false;
static char *bearer_client_detail = NULL;

/*
 * The refusals that look like guessing: the token itself was rejected (not a
 * JWS, too large, or not valid: signature, key, issuer, times, audience,
 * claims, revocation).  Only these count against the client's address and get
 * the brake's hint.  A token that verified but asked for a role, database or
 * address it does not allow, a subject at its session limit, and what the
 * server could not do (validator_*, jwks_unavailable) say nothing about
 * guessing tokens: holding them back would brake a legitimate user.
 */
static const char *const token_rejected_reasons[] = {
	"malformed", "too_large", "unsupported_alg", "unsupported_typ", "untrusted_issuer",
	"unknown_key", "bad_signature", "expired", "not_yet_valid", "lifetime_too_long",
	"audience_mismatch", "missing_claim", "revoked",
};

static bool
token_rejected(const char *reason)
{
	int			i;

	for (i = 0; i < lengthof(token_rejected_reasons); i++)
		if (strcmp(reason, token_rejected_reasons[i]) == 0)
			return true;
	return false;
}

/* The audit record and the counters' arguments of this attempt (identity: the decision's). */
static void
describe_attempt(LoginAttempt *a, const char *reason, AuditRecord *rec, LoginStatsArgs *stats)
{
	TokenDecision *d = a->decision;
	Port	   *port = a->port;

	memset(rec, 0, sizeof(*rec));
	memset(stats, 0, sizeof(*stats));
	rec->at = a->started;
	rec->ssl = port->ssl_in_use;
	rec->cached = d ? d->from_cache : false;
	rec->pid = MyProcPid;
	rec->queue_us = d ? d->queue_us : -1;
	pg_oauth_strlcpy_text(rec->reason, reason, sizeof(rec->reason));
	rec->per_transaction = a->transaction;
	/* names from the startup packet are any bytes: kept as valid UTF-8 */
	pg_oauth_escape_text(a->role ? a->role : "", rec->role, sizeof(rec->role));
	pg_oauth_escape_text(port->database_name ? port->database_name : "", rec->database,
						 sizeof(rec->database));
	pg_oauth_strlcpy_text(rec->client_addr, a->client_addr ? a->client_addr : "", sizeof(rec->client_addr));
	stats->key_cache_hit = -1;
	stats->validation_us = -1;
	stats->queue_us = -1;
	if (d)
	{
		/* pyhook fills issuer/subject/token id only once the signature verified */
		rec->issuer = d->issuer;
		rec->subject = d->subject;
		rec->token_id = d->token_id;
		pg_oauth_strlcpy_text(rec->kid, d->kid, sizeof(rec->kid));
		pg_oauth_strlcpy_text(rec->alg, d->alg, sizeof(rec->alg));
		stats->issuer = d->issuer;
		stats->from_cache = d->from_cache;
		stats->key_cache_hit = d->key_cache_hit;
		stats->validation_us = d->validation_us;
		stats->queue_us = d->queue_us;
	}
}

/* A refused attempt: the audit line, the audit ring and the counters, now. */
static void
finish_refused_attempt(LoginAttempt *a, const char *reason)
{
	AuditRecord rec;
	LoginStatsArgs stats;

	describe_attempt(a, reason, &rec, &stats);
	rec.elapsed_us = (int64) (GetCurrentTimestamp() - a->started);
	audit_log_record(&rec);
	login_stats_record(stats.issuer, reason, false,
					   stats.from_cache, stats.key_cache_hit,
					   stats.validation_us, stats.queue_us, rec.elapsed_us);
}

/*
 * Refuse the login.  The server log always gets the reason and the whole
 * sentence; pg_oauth.client_detail decides what the client reads.  A client
 * address that keeps presenting bad tokens waits a little longer each time.
 */
void
login_refuse(LoginAttempt *a, const char *reason, const char *detail, const char *hint)
{
	StringInfoData logdetail;
	TokenDecision *decision = a->decision;
	int			delay = 0;
	char	   *brake = NULL;

	if (a->token != NULL)
		explicit_bzero(a->token, a->token_len);

	finish_refused_attempt(a, reason);
	if (a->token_seen && token_rejected(reason))
		delay = rate_limit_record_failure(a->client_addr);
	/* rate_limited: the brake is the explanation */
	if (a->token_seen && (token_rejected(reason) || strcmp(reason, "rate_limited") == 0))
		brake = rate_limit_hint(a->client_addr, delay);
	if (brake)
		hint = hint ? psprintf("%s %s", hint, brake) : brake;
	if (delay > 0)
		rate_limit_sleep(delay);

	initStringInfo(&logdetail);
	appendStringInfo(&logdetail, "reason=%s: %s", reason, detail);
	if (decision && decision->issuer)
		appendStringInfo(&logdetail, " (issuer=%s subject=%s token_id=%s)",
						 decision->issuer,
						 decision->subject ? decision->subject : "",
						 decision->token_id ? decision->token_id : "");

	if (a->bearer)
	{
		/*
		 * OAUTHBEARER: PostgreSQL's auth-oauth.c writes the FATAL the client
		 * reads (validator modules should not end the exchange themselves);
		 * the server log gets the same line as a password login.
		 */
		ereport(LOG_SERVER_ONLY,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("JWT authentication failed for user \"%s\"", a->port->user_name),
				 errdetail("%s", logdetail.data),
				 hint ? errhint("%s", hint) : 0));
		bearer_client_detail =
			pg_oauth_client_detail == CLIENT_DETAIL_FULL ?
			psprintf("reason=%s: %s", reason, detail) :
			pg_oauth_client_detail == CLIENT_DETAIL_REASON ?
			psprintf("reason=%s", reason) : NULL;
		bearer_refused = true;
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg_internal("pg_oauth refused the bearer token")));
	}

	/*
	 * oauth.authenticate(): the transaction fails (ERROR), the session (a
	 * pooler's connection) lives on.  A login ends (FATAL).  errdetail_log
	 * keeps the whole story out of the client's reach either way.
	 */
	ereport(a->transaction ? ERROR : FATAL,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 a->transaction ?
			 errmsg("JWT authentication failed for role \"%s\"", a->role) :
			 errmsg("JWT authentication failed for user \"%s\"", a->port->user_name),
			 pg_oauth_client_detail == CLIENT_DETAIL_FULL ?
			 errdetail("reason=%s: %s", reason, detail) :
			 pg_oauth_client_detail == CLIENT_DETAIL_REASON ?
			 errdetail("reason=%s", reason) : 0,
			 errdetail_log("%s", logdetail.data),
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
}

static bool connection_encrypted(Port *port);

/* pg_oauth.require_ssl: a token must not cross the network in clear (Unix sockets may). */
static bool
token_would_travel_in_clear(Port *port)
{
	return pg_oauth_require_ssl && !connection_encrypted(port) &&
		port->raddr.addr.ss_family != AF_UNIX;
}

static bool
connection_encrypted(Port *port)
{
	if (port->ssl_in_use)
		return true;
#ifdef ENABLE_GSS
	if (port->gss && be_gssapi_get_enc(port))
		return true;
#endif
	return false;
}

/*
 * A compact JWS is three base64url segments separated by dots.  The client
 * encoding is unknown during authentication, so check the raw bytes here and
 * keep anything else away from the workers.
 */
static bool
looks_like_jws(const char *token, int len)
{
	int			dots = 0;
	int			seglen = 0;
	int			i;

	for (i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) token[i];

		if (c == '.')
		{
			/* header and payload must not be empty; the signature may be */
			if (seglen == 0)
				return false;
			dots++;
			seglen = 0;
		}
		else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
				 (c >= '0' && c <= '9') || c == '-' || c == '_')
			seglen++;
		else
			return false;
	}
	return dots == 2;
}

static char *
client_address(Port *port, char *buf, size_t buflen)
{
	char	   *pct;

	if (port->raddr.addr.ss_family == AF_UNIX)
		return NULL;
	if (pg_getnameinfo_all(&port->raddr.addr, port->raddr.salen,
						   buf, buflen, NULL, 0, NI_NUMERICHOST) != 0)
		return NULL;
	/* inet has no room for an IPv6 zone ("fe80::1%eth0") */
	if ((pct = strchr(buf, '%')) != NULL)
		*pct = '\0';
	return buf;
}

static bool
role_in_list(const char *role, List *roles)
{
	ListCell   *lc;

	foreach(lc, roles)
	{
		if (strcmp((const char *) lfirst(lc), role) == 0)
			return true;
	}
	return false;
}

static char *
roles_as_text(List *roles)
{
	StringInfoData buf;
	ListCell   *lc;

	if (roles == NIL)
		return "none";
	initStringInfo(&buf);
	foreach(lc, roles)
	{
		if (buf.len > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, quote_identifier(lfirst(lc)));
	}
	return buf.data;
}

static const char *
hint_for(const char *reason, const char *detail)
{
	/* before CREATE EXTENSION oauth.workers() does not exist yet: say what to do */
	if (strcmp(reason, "validator_unavailable") == 0 &&
		strstr(detail, PG_OAUTH_EXTENSION_MISSING) != NULL)
		return "Run CREATE EXTENSION pg_oauth CASCADE in the database named by pg_oauth.database (the server log names it).";
	if (strcmp(reason, "validator_unavailable") == 0 ||
		strcmp(reason, "validator_timeout") == 0 ||
		strcmp(reason, "validator_error") == 0)
		return "The server log and SELECT * FROM oauth.workers() say more.";
	if (strcmp(reason, "expired") == 0)
		return "Get a fresh token from your identity provider.";
	return NULL;
}

/*
 * The role the token admits must exist, may log in, and must not reach a
 * privilege token logins refuse (role_policy.c).  pg_authid and
 * pg_auth_members are shared catalogs, readable before a database is
 * chosen.
 */
static void
check_role(LoginAttempt *a)
{
	const char *user = a->role;
	HeapTuple	roletup;
	bool		canlogin;
	RolePrivilege found[ROLE_PRIV_COUNT];
	int			nfound;
	int			i;

	/*
	 * A worker may have just created the role or changed its memberships
	 * (provisioning, 55-provisioning.sql) and committed: take in the
	 * invalidations, so that neither a negative cache entry left by the
	 * pg_hba.conf match nor an old catalog snapshot hides what it did.
	 */
	AcceptInvalidationMessages();
	roletup = SearchSysCache1(AUTHNAME, CStringGetDatum(user));
	if (!HeapTupleIsValid(roletup))
		login_refuse(a, "unknown_role", psprintf("role \"%s\" does not exist", user), NULL);
	a->roleid = ((Form_pg_authid) GETSTRUCT(roletup))->oid;
	canlogin = ((Form_pg_authid) GETSTRUCT(roletup))->rolcanlogin;
	ReleaseSysCache(roletup);
	if (!canlogin)
		login_refuse(a, "role_cannot_login",
			   psprintf("role \"%s\" is not permitted to log in (NOLOGIN)", user), NULL);

	(void) role_reachable_privileges(a->roleid, found, ROLE_PRIV_COUNT, &nfound);
	for (i = 0; i < nfound; i++)
	{
		const char *priv = role_privilege_name(found[i].bit);
		const char *how;

		if (role_privilege_allowed(found[i].bit))
			continue;
		how = (found[i].via == a->roleid) ?
			psprintf("role \"%s\" has %s", user, priv) :
			psprintf("role \"%s\" is a member of \"%s\", which has %s",
					 user, found[i].via_name, priv);
		if (found[i].bit == ROLE_PRIV_SUPERUSER)
			login_refuse(a, "superuser_forbidden",
				   psprintf("%s: privilege superuser is not allowed on token logins", how),
				   "Log in with a role that is not a superuser, or set pg_oauth.allow_privileges.");
		login_refuse(a, "privilege_forbidden",
			   psprintf("%s: privilege %s is not allowed on token logins", how, priv),
			   "Log in with a less privileged role, or name the privilege in pg_oauth.allow_privileges.");
	}
}

static void
begin_attempt(LoginAttempt *a, Port *port, char *addrbuf, size_t addrlen)
{
	memset(a, 0, sizeof(*a));
	a->port = port;
	a->role = port->user_name;
	a->started = GetCurrentTimestamp();
	TRACE_BACKEND(TRACE_B_START);
	a->client_addr = client_address(port, addrbuf, addrlen);
}

/*
 * Cheap refusals first: none of these needs a worker.  On a password login
 * they come before the token is asked for.
 */
static void
check_connection(LoginAttempt *a)
{
	Port	   *port = a->port;

	/* A token must never cross the network in clear. */
	if (token_would_travel_in_clear(port))
		login_refuse(a, "ssl_required",
			   a->bearer ?
			   "token logins need an encrypted connection; the token was not checked" :
			   "token logins need an encrypted connection; the token was not requested",
			   "Connect with sslmode=require (or verify-full).");

	/* A walsender (replication=true|database) streams every change: DBA's choice. */
	if (am_walsender && !role_privilege_allowed(ROLE_PRIV_REPLICATION))
		login_refuse(a, "replication_forbidden",
			   a->bearer ?
			   "replication connections are not allowed on token logins; the token was not checked" :
			   "replication connections are not allowed on token logins; the token was not requested",
			   "Use a pg_hba line with another method for replication, or add replication to pg_oauth.allow_privileges.");

	startup_options_check(a);
}

/*
 * Token in, decision out, for every kind of caller: the decision cache or a
 * worker validates it, and the role asked for must be one it allows and pass
 * role_policy.c.  A login is also registered (limits, expiry, revocation)
 * inside the same check of the configuration version; oauth.authenticate()
 * holds no session.  Any refusal goes through login_refuse().  The token is
 * wiped before this returns; *decision lives in the caller's memory.
 */
static void
decide_token(LoginAttempt *a, char *token, int token_len, TokenDecision *decision)
{
	Port	   *port = a->port;
	TokenRequest req;
	int			live;
	int			checks;
	uint8		token_hash[PG_OAUTH_TOKEN_HASH_LEN];
	bool		hashed;
	uint64		config_version,
				key_epoch;

	a->token = token;
	a->token_len = token_len;
	if (!looks_like_jws(token, token_len))
		login_refuse(a, "malformed",
			   a->bearer ? "the bearer token is not a compact JWS (three base64url parts)" :
			   a->transaction ? "the token is not a compact JWS (three base64url parts)" :
			   "the password is not a compact JWS (three base64url parts)",
			   a->bearer || a->transaction ? NULL : "Send the JWT as the password.");

	req.token = token;
	req.token_len = token_len;
	req.role = a->role;
	req.database = port->database_name ? port->database_name : "";
	req.client_addr = a->client_addr;
	req.ssl = port->ssl_in_use;

	/* A token seen again is admitted from the cache; otherwise a worker decides. */
	if (a->token_hash != NULL)
	{
		hashed = decision_cache_usable();
		memcpy(token_hash, a->token_hash, PG_OAUTH_TOKEN_HASH_LEN);
	}
	else
		hashed = decision_cache_hash(token, token_len, token_hash);
	TRACE_BACKEND(TRACE_B_HASHED);
	for (checks = 1;; checks++)
	{
		decision_cache_versions(&config_version, &key_epoch);
		if (!hashed || !decision_cache_lookup(&req, token_hash, decision))
			token_queue_validate(&req, decision);
		a->decision = decision;

		if (!decision->ok)
			login_refuse(a, decision->reason, decision->detail,
				   hint_for(decision->reason, decision->detail));

		/*
		 * An oauth line names one issuer: the one libpq's flow asks for a
		 * token and the one a pg_ident.conf map's entries are written for.
		 * A token of another issuer of oauth.issuers is not for this line.
		 */
		if (a->expected_issuer != NULL &&
			(decision->issuer == NULL || strcmp(decision->issuer, a->expected_issuer) != 0))
			login_refuse(a, "untrusted_issuer",
				   psprintf("the token's issuer is not \"%s\", the issuer of the pg_hba.conf oauth line",
							a->expected_issuer),
				   "Get a token from the issuer the oauth line names, or add an oauth line for this issuer.");

#if PG_VERSION_NUM >= 180000
		/* ... and the scopes libpq's flow asked the user to grant */
		if (a->bearer)
		{
			char	   *missing = bearer_missing_scopes(decision->claims, port->hba->oauth_scope);

			if (missing != NULL)
				login_refuse(a, "scope_missing",
					   psprintf("the token does not grant scope \"%s\" of the pg_hba.conf oauth line (claims scope and scp)",
								missing),
					   "Ask the identity provider for a token with the scopes the oauth line names.");
		}
#endif

		/* oauth.authenticate(token) without a role: the one role the token allows */
		if (a->role[0] == '\0')
		{
			if (list_length(decision->allowed_roles) != 1)
				login_refuse(a, "role_not_allowed",
					   psprintf("no role was named and the token allows roles: %s",
								roles_as_text(decision->allowed_roles)),
					   "Name the role: oauth.authenticate(token, role).");
			a->role = pstrdup(linitial(decision->allowed_roles));
		}
		else if (!role_in_list(a->role, decision->allowed_roles))
			login_refuse(a, "role_not_allowed",
				   psprintf("the token allows roles: %s", roles_as_text(decision->allowed_roles)),
				   NULL);

		check_role(a);

		/* oauth.sessions, and the subject's session limit, counted atomically */
		if (!a->transaction)
		{
			live = session_registry_enter(decision, a->role, req.database, a->client_addr);
			if (live >= 0)
				login_refuse(a, "too_many_connections",
					   psprintf("subject already has %d live token sessions (limit %d)",
								live, decision->max_sessions),
					   "Close another session of this identity first.");
		}

		/*
		 * A revocation that committed while this token was checked ends the
		 * sessions in the registry at its commit, after moving the version:
		 * a session entered too late for that sees the new version here and
		 * is checked again against the new configuration.
		 */
		if (pg_atomic_read_u64(&pg_oauth_shared->config_version) == config_version)
			break;
		if (!a->transaction)
			session_registry_leave();
		if (checks >= 3)
			login_refuse(a, "validator_unavailable",
				   "the configuration changed while this token was being checked, three times in a row",
				   "Log in again.");
	}
	explicit_bzero(token, token_len);
	a->token = NULL;

	if (hashed && !decision->from_cache)
		decision_cache_store(&req, token_hash, decision, config_version, key_epoch);
}

/* A login's decision: remembered for oauth.claims(), audited once admitted. */
static void
admit_login(LoginAttempt *a, TokenDecision *decision)
{
	AuditRecord rec;
	LoginStatsArgs stats;

	session_state_remember(decision, a->role);
	TRACE_BACKEND(TRACE_B_CHECKED);
	/* audited "ok" only once PostgreSQL admits the session (admission.c) */
	describe_attempt(a, "ok", &rec, &stats);
	admission_expect(a->roleid, &rec, &stats);
	TRACE_BACKEND(TRACE_B_ADMISSION);
#ifdef PG_OAUTH_TRACE
	trace_log_login(decision->from_cache);
#endif
	a->decision = NULL;			/* it lives in the caller's frame */
}

/*
 * oauth.authenticate() (transaction_identity.c): the same checks and the same
 * decision as a login, for role (NULL or "": the one role the token allows),
 * over the session's own connection.  presented: the token's length as
 * sent (token holds at most the ceiling); in_statement: it was written into
 * the statement text.  A refusal is an ERROR, audited and braked like a
 * refused login.  On success *decision holds the identity,
 * *roleid the role, and the attempt is counted and (unless the decision
 * cache answered) audited at once with its own kind ("transaction").  The
 * token is wiped.
 */
static void
begin_transaction_attempt(LoginAttempt *a, const char *role, char *addrbuf, size_t addrlen)
{
	begin_attempt(a, MyProcPort, addrbuf, addrlen);
	a->transaction = true;
	a->role = role ? role : "";
	a->token_seen = true;
}

/* A token written into the statement text: refused unchecked, and treated as exposed. */
static void
refuse_written_into_statement(LoginAttempt *a)
{
	login_refuse(a, "token_in_statement",
		   "the token is written into the statement text, which statement logging, pg_stat_activity and error reports show; it was not checked",
		   "Pass the token as a bind parameter: SELECT oauth.authenticate($1). Treat this token as exposed.");
}

/*
 * gateway.c found oauth.authenticate()'s token written into a statement as a
 * literal (the planner sees it before the call): refused and audited as a
 * call with it would be.
 */
void
token_transaction_written_into_statement(void)
{
	LoginAttempt attempt;
	char		addrbuf[NI_MAXHOST];

	begin_transaction_attempt(&attempt, NULL, addrbuf, sizeof(addrbuf));
	refuse_written_into_statement(&attempt);
	pg_unreachable();
}

void
token_transaction_decide(const char *role, char *token, int token_len,
						 const uint8 *token_hash, size_t presented, bool in_statement,
						 TokenDecision *decision, Oid *roleid, const char **granted)
{
	LoginAttempt attempt;
	char		addrbuf[NI_MAXHOST];
	AuditRecord rec;
	LoginStatsArgs stats;

	begin_transaction_attempt(&attempt, role, addrbuf, sizeof(addrbuf));
	attempt.token = token;
	attempt.token_len = token_len;
	attempt.token_hash = token_hash;
	if (token_would_travel_in_clear(MyProcPort))
		login_refuse(&attempt, "ssl_required",
			   "the session's connection is not encrypted: the token crossed the network in clear and was not checked",
			   "Connect the pooler to PostgreSQL over a Unix socket or with sslmode=require, and treat this token as exposed.");
	if (presented > (size_t) pg_oauth_max_token_bytes)
		login_refuse(&attempt, "too_large",
			   psprintf("the token is %zu bytes; pg_oauth.max_token_bytes is %d",
						presented, pg_oauth_max_token_bytes),
			   NULL);
	if (in_statement)
		refuse_written_into_statement(&attempt);
	decide_token(&attempt, token, token_len, decision);
	describe_attempt(&attempt, "ok", &rec, &stats);

	/*
	 * A pooled connection authenticates every transaction: the audit (a log
	 * line, a row) records a token the first time it is decided, and again
	 * each time the decision cache forgets it (a configuration or key change,
	 * expiry, eviction); refusals always.  The counters count every call.
	 */
	rec.elapsed_us = (int64) (GetCurrentTimestamp() - attempt.started);
	if (!decision->from_cache)
	{
		rec.ok = true;
		audit_log_record(&rec);
	}
	login_stats_record(stats.issuer, "ok", true, stats.from_cache, stats.key_cache_hit,
					   stats.validation_us, stats.queue_us, rec.elapsed_us);
	*roleid = attempt.roleid;
	*granted = attempt.role;
}

/* A trust line: ask for the token as the password, then decide. */
static void
authenticate_with_token(Port *port)
{
	LoginAttempt attempt;
	TokenDecision decision;
	char		addrbuf[NI_MAXHOST];
	char	   *token;
	int			token_len = 0;

	begin_attempt(&attempt, port, addrbuf, sizeof(addrbuf));
	check_connection(&attempt);
	token = password_packet_read(&attempt, &token_len);
	TRACE_BACKEND(TRACE_B_TOKEN);
	decide_token(&attempt, token, token_len, &decision);
	admit_login(&attempt, &decision);
}

/*
 * OAUTHBEARER (oauth_validator.c): the token PostgreSQL's "oauth" method
 * received goes through the same checks and decide_token() as a password
 * login.  Returns whether it is accepted; *authn_id gets the identity, and
 * *client_detail what pg_oauth.client_detail lets a refused client read.
 * A refusal is logged, audited and counted by login_refuse(), whose ERROR is
 * caught here: PostgreSQL then refuses the exchange itself.
 */
bool
token_login_bearer(Port *port, const char *token, char **authn_id, char **client_detail)
{
	LoginAttempt attempt;		/* PG_CATCH below does not read it */
	TokenDecision decision;
	char		addrbuf[NI_MAXHOST];
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool accepted = false;

	*authn_id = NULL;
	*client_detail = NULL;
	bearer_refused = false;
	bearer_client_detail = NULL;
	PG_TRY();
	{
		size_t		len = strlen(token);
		char	   *copy;

		begin_attempt(&attempt, port, addrbuf, sizeof(addrbuf));
		attempt.bearer = true;
#if PG_VERSION_NUM >= 180000
		attempt.expected_issuer = bearer_line_issuer(port);
#endif
		check_connection(&attempt);
		attempt.token_seen = true;
		TRACE_BACKEND(TRACE_B_TOKEN);
		if (len > (size_t) pg_oauth_max_token_bytes)
			login_refuse(&attempt, "too_large",
				   psprintf("the token is %zu bytes; pg_oauth.max_token_bytes is %d",
							len, pg_oauth_max_token_bytes),
				   NULL);
		copy = pnstrdup(token, len);
		decide_token(&attempt, copy, (int) len, &decision);
		admit_login(&attempt, &decision);
		*authn_id = bearer_identity();
		accepted = true;
	}
	PG_CATCH();
	{
		if (!bearer_refused)
			PG_RE_THROW();
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		*client_detail = bearer_client_detail;
	}
	PG_END_TRY();
	bearer_refused = false;
	return accepted;
}

static void
pg_oauth_client_auth(Port *port, int status)
{
	if (prev_client_auth_hook)
		prev_client_auth_hook(port, status);

	/*
	 * A password line refused this login: if it looks like a token login
	 * that missed its trust line (no TLS, line order), the log says so.
	 * STATUS_EOF is psql hanging up to prompt for a password: nothing to say.
	 */
	if (status == STATUS_ERROR &&
		(port->hba->auth_method == uaSCRAM || port->hba->auth_method == uaMD5 ||
		 port->hba->auth_method == uaPassword))
		hba_fallthrough_explain(port);

#if PG_VERSION_NUM >= 180000
	/* pg_oauth as the validator of an "oauth" line: see oauth_validator.c */
	if (port->hba->auth_method == uaOAuth)
	{
		oauth_validator_after_method(port, status);
		return;
	}
#endif

	/* Other methods decide for themselves; a failed one is refused anyway. */
	if (status != STATUS_OK || port->hba->auth_method != uaTrust)
		return;

	authenticate_with_token(port);
}

void
pg_oauth_install_auth_hook(void)
{
	prev_client_auth_hook = ClientAuthentication_hook;
	ClientAuthentication_hook = pg_oauth_client_auth;
}
