/*-------------------------------------------------------------------------
 *
 * bearer_identity.c
 *	  Who an OAUTHBEARER login (PostgreSQL 18's "oauth" method) is: the
 *	  identity it reports to PostgreSQL, and the issuer its pg_hba.conf line
 *	  names.
 *
 * Beside oauth_validator.c, which hands the bearer token to the same
 * decision as a password login (auth_hook.c's token_login_bearer()): that
 * decision takes the line's issuer from here, and reports the identity
 * made here once the token is accepted.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "libpq/hba.h"

/*
 * The identity an OAUTHBEARER login reports to PostgreSQL (its authn_id,
 * SYSTEM_USER "oauth:<authn_id>", what a pg_ident.conf map matches): the
 * token's issuer, one space, its subject.  An issuer is a URL and has no
 * space, so the first space splits the two.  NULL without a subject.
 */
char *
bearer_identity(void)
{
	if (!pg_oauth_session.active || pg_oauth_session.issuer == NULL ||
		pg_oauth_session.subject == NULL)
		return NULL;
	return psprintf("%s %s", pg_oauth_session.issuer, pg_oauth_session.subject);
}

#if PG_VERSION_NUM >= 180000
/*
 * The issuer identifier of an oauth line: its issuer option, or, when that
 * is a .well-known URI of the discovery document (OIDC style
 * "<issuer>/.well-known/openid-configuration", RFC 8414 style
 * "<authority>/.well-known/oauth-authorization-server<path>"), the
 * identifier it stands for, as libpq derives it.
 */
char *
bearer_line_issuer(Port *port)
{
	const char *uri = port->hba ? port->hba->oauth_issuer : NULL;
	const char *wk;
	const char *rest;

	if (uri == NULL || uri[0] == '\0')
		return NULL;
	wk = strstr(uri, "/.well-known/");
	if (wk == NULL)
		return pstrdup(uri);
	rest = wk + strlen("/.well-known/");
	if (strncmp(rest, "openid-configuration", strlen("openid-configuration")) == 0)
		rest += strlen("openid-configuration");
	else if (strncmp(rest, "oauth-authorization-server", strlen("oauth-authorization-server")) == 0)
		rest += strlen("oauth-authorization-server");
	return psprintf("%.*s%s", (int) (wk - uri), uri, rest);
}
#endif
