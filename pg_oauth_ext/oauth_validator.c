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
#if PG_VERSION_NUM >= 190000
	/* what pg_oauth.client_detail lets the client read, as on password logins */
	if (!result->authorized && client_detail != NULL)
		result->error_detail = client_detail;
#endif
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

#endif							/* PG_VERSION_NUM >= 180000 */
