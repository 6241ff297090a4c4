/*-------------------------------------------------------------------------
 *
 * oauth_validator.c
 *	  pg_oauth as the OAuth validator module of PostgreSQL 18's "oauth"
 *	  pg_hba method (SASL OAUTHBEARER), so that clients using libpq's
 *	  built-in OAuth flow and clients sending the token as a password meet
 *	  one policy.
 *
 * postgresql.conf:	oauth_validator_libraries = 'pg_oauth' (and pg_oauth in
 *					shared_preload_libraries, as always)
 * pg_hba.conf:		hostssl all all 0.0.0.0/0 oauth issuer=... scope=...
 *					delegate_ident_mapping=1
 *
 * validate_cb hands the bearer token to auth_hook.c's token_login_bearer():
 * the same workers, issuers, role_map, revocations, rate limits, role
 * policy, session registry, claims and audit as a password login.  With
 * delegate_ident_mapping=1 that decision is the whole authorization; without
 * it PostgreSQL then also checks the line's pg_ident.conf map against the
 * identity we report ("<issuer> <subject>").  The ClientAuthentication hook
 * still runs after the method (oauth_validator_after_method).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#if PG_VERSION_NUM >= 180000

#include "libpq/hba.h"
#include "libpq/oauth.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

static bool pg_oauth_validate(const ValidatorModuleState *state, const char *token,
							  const char *role, ValidatorModuleResult *result);

static const OAuthValidatorCallbacks validator_callbacks = {
	.magic = PG_OAUTH_VALIDATOR_MAGIC,
	.validate_cb = pg_oauth_validate,
};

const OAuthValidatorCallbacks *
_PG_oauth_validator_module_init(void)
{
	return &validator_callbacks;
}

/*
 * Always returns true (a decision was made); result->authorized says which.
 * A refusal has been logged with its reason= code and audited by then.
 */
static bool
pg_oauth_validate(const ValidatorModuleState *state, const char *token,
				  const char *role, ValidatorModuleResult *result)
{
	char	   *authn_id = NULL;
	char	   *client_detail = NULL;

	/*
	 * Loaded only now, by the oauth method: no shared memory, no workers.
	 * Fail closed and say why (the trust-line guard in pg_oauth.c does the
	 * same for late loads).
	 */
	if (!pg_oauth_loaded_at_startup || MyProcPort == NULL)
	{
		ereport(LOG_SERVER_ONLY,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("JWT authentication failed for user \"%s\"", role ? role : ""),
				 errdetail("reason=validator_unavailable: pg_oauth is not in shared_preload_libraries, so the token cannot be checked"),
				 errhint("Add pg_oauth to shared_preload_libraries and restart the server.")));
		result->authorized = false;
		return true;
	}

	result->authorized = token_login_bearer(MyProcPort, token, &authn_id, &client_detail);
	result->authn_id = authn_id;

	/*
	 * 19's error_detail is not for the client: PostgreSQL logs it as the
	 * DETAIL of its own failure line.  pg_oauth's line already logs the
	 * reason, so it stays unset (PostgreSQL then logs its generic words).
	 */
	return true;
}

/*
 * The ClientAuthentication hook on an "oauth" line, after the method
 * decided.  The connection checks (TLS, replication, startup options) and
 * the admission checks already ran in validate_cb and admission.c; what is
 * left is a token we accepted that the line's pg_ident.conf map then
 * refused (no delegate_ident_mapping): audit it with the code a token
 * without the role gets.
 */
void
oauth_validator_after_method(Port *port, int status)
{
	const char *role;

	if (status == STATUS_OK)
		return;
	if (!admission_refuse("role_not_allowed", &role))
		return;					/* refused by us (already audited) or not ours */
	ereport(LOG,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("JWT authentication failed for user \"%s\"", role),
			 errdetail("reason=role_not_allowed: the token is valid, but pg_ident.conf map \"%s\" does not map identity \"%s\" to this role",
					   port->hba->usermap ? port->hba->usermap : "",
					   MyClientConnectionInfo.authn_id ? MyClientConnectionInfo.authn_id : ""),
			 errhint("Add a line for this identity to the map, or set delegate_ident_mapping=1 on the oauth line to let oauth.role_map decide.")));
}

/*
 * OpenID Connect's own scopes ask for an ID token and userinfo, not for
 * access to a resource: access tokens need not carry them (Entra ID's
 * never do), so an oauth line asking for them asks nothing of the token.
 */
static const char *const oidc_scopes[] = {
	"openid", "profile", "email", "address", "phone", "offline_access"
};

static bool
is_oidc_scope(const char *scope, int len)
{
	for (int i = 0; i < lengthof(oidc_scopes); i++)
		if (strlen(oidc_scopes[i]) == len && memcmp(oidc_scopes[i], scope, len) == 0)
			return true;
	return false;
}

/* Is scope (len bytes) one of the space-separated words of list? */
static bool
word_in(const char *list, int list_len, const char *scope, int len)
{
	int			i = 0;

	while (i < list_len)
	{
		int			start;

		while (i < list_len && list[i] == ' ')
			i++;
		start = i;
		while (i < list_len && list[i] != ' ')
			i++;
		if (i - start == len && len > 0 && memcmp(list + start, scope, len) == 0)
			return true;
	}
	return false;
}

/*
 * Does the token grant scope?  RFC 9068 / RFC 8693 put the scopes in
 * "scope", a space-separated string; Entra ID and Okta in "scp", a string
 * or an array of strings.  Either counts.
 */
static bool
token_grants_scope(JsonbContainer *claims, const char *scope, int len)
{
	static const char *const names[] = {"scope", "scp"};

	for (int n = 0; n < lengthof(names); n++)
	{
		JsonbValue	v;

		if (!getKeyJsonValueFromContainer(claims, names[n], strlen(names[n]), &v))
			continue;
		if (v.type == jbvString && word_in(v.val.string.val, v.val.string.len, scope, len))
			return true;
		if (v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
		{
			JsonbIterator *it = JsonbIteratorInit(v.val.binary.data);
			JsonbValue	e;
			JsonbIteratorToken t;

			while ((t = JsonbIteratorNext(&it, &e, true)) != WJB_DONE)
				if (t == WJB_ELEM && e.type == jbvString && e.val.string.len == len &&
					memcmp(e.val.string.val, scope, len) == 0)
					return true;
		}
	}
	return false;
}

/*
 * The scopes of an oauth line's scope= (space-separated) that the token's
 * claims do not grant, OpenID Connect's own left aside: NULL when none is
 * missing, else the missing ones, space-separated.  PostgreSQL leaves this
 * check to the validator: without it a token the user granted to another
 * application of the same audience would open a session here.
 */
char *
bearer_missing_scopes(const char *claims_json, const char *line_scope)
{
	Jsonb	   *claims;
	StringInfoData missing;
	const char *p = line_scope;

	if (line_scope == NULL || line_scope[0] == '\0')
		return NULL;
	claims = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(claims_json ? claims_json : "{}")));
	initStringInfo(&missing);
	while (*p != '\0')
	{
		const char *start;
		int			len;

		while (*p == ' ')
			p++;
		start = p;
		while (*p != '\0' && *p != ' ')
			p++;
		len = (int) (p - start);
		if (len == 0 || is_oidc_scope(start, len))
			continue;
		if (!JB_ROOT_IS_OBJECT(claims) || !token_grants_scope(&claims->root, start, len))
			appendStringInfo(&missing, "%s%.*s", missing.len > 0 ? " " : "", len, start);
	}
	if (missing.len == 0)
	{
		pfree(missing.data);
		return NULL;
	}
	return missing.data;
}

#endif							/* PG_VERSION_NUM >= 180000 */
