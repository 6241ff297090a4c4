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
#include "libpq/libpq.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "utils/builtins.h"
#include "utils/syscache.h"

#ifdef ENABLE_GSS
#include "libpq/be-gssapi-common.h"
#endif

/* A client sending more than this is cut off without reading the rest. */
#define OVERSIZE_DRAIN_LIMIT	(1024 * 1024)

static ClientAuthentication_hook_type prev_client_auth_hook = NULL;

/*
 * Refuse the login.  The server log always gets the reason and the whole
 * sentence; pg_oauth.client_detail decides what the client reads.
 */
static void
refuse(Port *port, const char *reason, const char *detail, const char *hint,
	   const TokenDecision *decision)
pg_attribute_noreturn();

static void
refuse(Port *port, const char *reason, const char *detail, const char *hint,
	   const TokenDecision *decision)
{
	StringInfoData logdetail;

	initStringInfo(&logdetail);
	appendStringInfo(&logdetail, "reason=%s: %s", reason, detail);
	if (decision && decision->issuer)
		appendStringInfo(&logdetail, " (issuer=%s subject=%s token_id=%s)",
						 decision->issuer,
						 decision->subject ? decision->subject : "",
						 decision->token_id ? decision->token_id : "");

	ereport(FATAL,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("JWT authentication failed for user \"%s\"", port->user_name),
			 pg_oauth_client_detail == CLIENT_DETAIL_FULL ?
			 errdetail("reason=%s: %s", reason, detail) :
			 pg_oauth_client_detail == CLIENT_DETAIL_REASON ?
			 errdetail("reason=%s", reason) : 0,
			 errdetail_log("%s", logdetail.data),
			 hint ? errhint("%s", hint) : 0));
	pg_unreachable();
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

/* "role", "Session-Authorization", ... as GUC name lookup would see them. */
static bool
is_forbidden_setting(const char *name, size_t len)
{
	char		norm[NAMEDATALEN];
	size_t		i;

	if (len >= sizeof(norm))
		return false;
	for (i = 0; i < len; i++)
		norm[i] = (name[i] == '-') ? '_' : pg_tolower((unsigned char) name[i]);
	norm[len] = '\0';
	return strcmp(norm, "role") == 0 || strcmp(norm, "session_authorization") == 0;
}

static bool
option_sets_forbidden(const char *opt)
{
	const char *eq = strchr(opt, '=');

	return is_forbidden_setting(opt, eq ? (size_t) (eq - opt) : strlen(opt));
}

/*
 * Startup options "role" and "session_authorization" are applied after
 * authentication with only a membership check: a token for alice must not
 * become a session acting as another role.
 */
static void
check_startup_options(Port *port)
{
	ListCell   *lc;

	/* name/value pairs sent as startup packet parameters */
	for (lc = list_head(port->guc_options); lc != NULL; lc = lnext(port->guc_options, lc))
	{
		const char *name = lfirst(lc);

		lc = lnext(port->guc_options, lc);
		if (is_forbidden_setting(name, strlen(name)))
			refuse(port, "startup_option_forbidden",
				   psprintf("startup parameter \"%s\" is not allowed on token logins", name),
				   "Connect as the role you need; SET ROLE after login is subject to normal privileges.",
				   NULL);
		if (lc == NULL)
			break;
	}

	/* -c name=value / --name=value inside the "options" parameter */
	if (port->cmdline_options != NULL)
	{
		int			maxac = 2 + (strlen(port->cmdline_options) + 1) / 2;
		char	  **av = palloc(maxac * sizeof(char *));
		int			ac = 0;
		int			i;

		av[ac++] = "postgres";
		pg_split_opts(av, &ac, port->cmdline_options);
		for (i = 1; i < ac; i++)
		{
			const char *arg = av[i];
			const char *setting = NULL;

			if (strncmp(arg, "--", 2) == 0)
				setting = arg + 2;
			else if (strncmp(arg, "-c", 2) == 0)
				setting = (arg[2] != '\0') ? arg + 2 : (i + 1 < ac ? av[++i] : NULL);
			if (setting && option_sets_forbidden(setting))
				refuse(port, "startup_option_forbidden",
					   "startup options may not set role or session_authorization on token logins",
					   "Connect as the role you need; SET ROLE after login is subject to normal privileges.",
					   NULL);
		}
	}
}

/* Read and throw away n bytes of the current message. */
static void
discard_bytes(size_t n)
{
	char		buf[8192];

	while (n > 0)
	{
		size_t		chunk = Min(n, sizeof(buf));

		if (pq_getbytes(buf, chunk) == EOF)
			return;
		n -= chunk;
	}
}

/*
 * Ask for the password and read the PasswordMessage with our own limit
 * (recv_password_packet is static and has a fixed one).  Returns a palloc'd
 * NUL-terminated string; *len excludes the terminator.
 */
static char *
read_token(Port *port, int *len)
{
	int			mtype;
	uint32		netlen;
	int64		body;
	char	   *buf;

	sendAuthRequest(port, AUTH_REQ_PASSWORD, NULL, 0);

	pq_startmsgread();
	mtype = pq_getbyte();
	if (mtype == EOF)
	{
		/* psql hangs up here to prompt for a password: not worth a log line. */
		proc_exit(0);
	}
	if (mtype != 'p')
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("expected password response, got message type %d", mtype)));

	if (pq_getbytes((char *) &netlen, 4) == EOF)
		proc_exit(0);
	body = (int64) pg_ntoh32(netlen) - 4;
	if (body < 0)
		ereport(FATAL,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("invalid password packet length")));

	/* body includes the terminating NUL */
	if (body > (int64) pg_oauth_max_token_bytes + 1)
	{
		/* Read it all when cheap, so the client gets our error, not a reset. */
		if (body <= OVERSIZE_DRAIN_LIMIT)
			discard_bytes((size_t) body);
		pq_endmsgread();
		refuse(port, "too_large",
			   psprintf("the token is %lld bytes; pg_oauth.max_token_bytes is %d",
						(long long) (body - 1), pg_oauth_max_token_bytes),
			   NULL, NULL);
	}

	buf = palloc(body + 1);
	if (body > 0 && pq_getbytes(buf, body) == EOF)
		proc_exit(0);
	pq_endmsgread();
	buf[body] = '\0';

	if (body < 2 || buf[body - 1] != '\0' || strlen(buf) != (size_t) (body - 1))
	{
		explicit_bzero(buf, body);
		refuse(port, "malformed", "the password is empty or not a single string",
			   "Send the JWT as the password.", NULL);
	}
	*len = (int) (body - 1);
	return buf;
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
hint_for(const char *reason)
{
	if (strcmp(reason, "validator_unavailable") == 0 ||
		strcmp(reason, "validator_timeout") == 0 ||
		strcmp(reason, "validator_error") == 0)
		return "The server log and SELECT * FROM oauth.workers() say more.";
	if (strcmp(reason, "expired") == 0)
		return "Get a fresh token from your identity provider.";
	return NULL;
}

static void
authenticate_with_token(Port *port)
{
	TokenRequest req;
	TokenDecision decision;
	char		addrbuf[NI_MAXHOST];
	char	   *token;
	int			token_len = 0;
	HeapTuple	roletup;
	bool		rolsuper;

	/* Before asking: a token must never cross the network in clear. */
	if (pg_oauth_require_ssl && !connection_encrypted(port) &&
		port->raddr.addr.ss_family != AF_UNIX)
		refuse(port, "ssl_required",
			   "token logins need an encrypted connection; the token was not requested",
			   "Connect with sslmode=require (or verify-full).", NULL);

	check_startup_options(port);

	token = read_token(port, &token_len);
	if (!looks_like_jws(token, token_len))
	{
		explicit_bzero(token, token_len);
		refuse(port, "malformed", "the password is not a compact JWS (three base64url parts)",
			   "Send the JWT as the password.", NULL);
	}

	req.token = token;
	req.token_len = token_len;
	req.role = port->user_name;
	req.database = port->database_name ? port->database_name : "";
	req.client_addr = client_address(port, addrbuf, sizeof(addrbuf));
	req.ssl = port->ssl_in_use;
	token_queue_validate(&req, &decision);
	explicit_bzero(token, token_len);

	if (!decision.ok)
		refuse(port, decision.reason, decision.detail, hint_for(decision.reason), &decision);

	if (!role_in_list(port->user_name, decision.allowed_roles))
		refuse(port, "role_not_allowed",
			   psprintf("the token allows roles: %s", roles_as_text(decision.allowed_roles)),
			   NULL, &decision);

	/* pg_authid is a shared catalog, readable before a database is chosen. */
	roletup = SearchSysCache1(AUTHNAME, CStringGetDatum(port->user_name));
	if (!HeapTupleIsValid(roletup))
		refuse(port, "unknown_role",
			   psprintf("role \"%s\" does not exist", port->user_name),
			   NULL, &decision);
	rolsuper = ((Form_pg_authid) GETSTRUCT(roletup))->rolsuper;
	ReleaseSysCache(roletup);
	if (rolsuper && !pg_oauth_allow_superuser)
		refuse(port, "superuser_forbidden",
			   psprintf("role \"%s\" is a superuser and pg_oauth.allow_superuser is off",
						port->user_name),
			   NULL, &decision);

	session_state_remember(&decision, port->user_name);

	if (Log_connections)
		ereport(LOG,
				(errmsg("pg_oauth: token login authorized: user=%s issuer=%s subject=%s token_id=%s",
						port->user_name,
						decision.issuer ? decision.issuer : "",
						decision.subject ? decision.subject : "",
						decision.token_id ? decision.token_id : "")));
}

static void
pg_oauth_client_auth(Port *port, int status)
{
	if (prev_client_auth_hook)
		prev_client_auth_hook(port, status);

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
