/*-------------------------------------------------------------------------
 *
 * hba_fallthrough.c
 *	  Say when a token login landed on a password line: in the server log,
 *	  and to the client as far as pg_oauth.client_detail allows.
 *
 * pg_oauth sees a token only through a trust line.  A token login without
 * TLS (the token lines are hostssl), or one that a broader password line
 * above the token lines matches first, ends on a scram-sha-256, md5 or
 * password line instead, and the client reads "password authentication
 * failed" with nothing pointing at pg_oauth.  When such a login fails and
 * the role has no password, or a trust line admits it by name or group, one
 * LOG line names the line it matched, the trust line it missed, and what to
 * do.  The password is never looked at, only whether the role has one.
 *
 * The client is told only about a role that a trust line names, by itself
 * or by a +group: a login over TLS to that line would tell it the role is a
 * token role anyway.  PostgreSQL's own FATAL stays as it is (message,
 * SQLSTATE 28P01, its server-side detail naming the matched line and the
 * method's own words): the hook only notes what to add, and our
 * emit_log_hook adds a DETAIL (which reaches only the client, as
 * PostgreSQL's detail for the log is errdetail_log) and a HINT.  With
 * client_detail = none nothing is added: the client reads exactly what any
 * failed password login reads.  Never whether the role has a password.
 * (PostgreSQL calls emit_log_hook only for messages that reach the server
 * log: with log_min_messages = panic the client reads no advice.)
 *
 * PostgreSQL keeps its parsed pg_hba.conf to itself (hba.c), so the file is
 * read again here with PostgreSQL's own tokenizer and parser; only failed
 * password logins pay for that.  Only the user column of the trust lines is
 * compared: this explains a refusal, it decides nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "libpq/hba.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/errcodes.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

/*
 * What the client's "password authentication failed" gets added, set by the
 * ClientAuthentication hook just before PostgreSQL reports the failure.
 */
static char *client_detail = NULL;
static char *client_hint = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;
static bool emit_hook_installed = false;

/* The first trust line whose user column admits the role. */
typedef struct TrustLine
{
	int			linenumber;		/* 0: none */
	ConnType	conntype;
	bool		by_name;		/* by its name or a +group, not by "all" */
	char	   *group;			/* the +group that admits it, or NULL */
} TrustLine;

static const char *
conntype_name(ConnType conntype)
{
	switch (conntype)
	{
		case ctLocal:
			return "local";
		case ctHost:
			return "host";
		case ctHostSSL:
			return "hostssl";
		case ctHostNoSSL:
			return "hostnossl";
		case ctHostGSS:
			return "hostgssenc";
		case ctHostNoGSS:
			return "hostnogssenc";
	}
	return "?";
}

/* A cheap filter before parsing: parse_hba_line resolves RADIUS servers. */
static bool
mentions_trust(TokenizedAuthLine *tok_line)
{
	ListCell   *field;
	ListCell   *lc;

	foreach(field, tok_line->fields)
	{
		foreach(lc, (List *) lfirst(field))
		{
			AuthToken  *tok = lfirst(lc);

			if (!tok->quoted && strcmp(tok->string, "trust") == 0)
				return true;
		}
	}
	return false;
}

/*
 * Does this user column admit the role?  The rules of hba.c's check_role():
 * "+group" is membership (a superuser is not a member by being one), "all"
 * unquoted is everyone, anything else is the name.
 */
static bool
user_column_admits(List *roles, const char *user, Oid roleid, bool *by_name, char **group)
{
	ListCell   *lc;
	bool		all = false;

	foreach(lc, roles)
	{
		AuthToken  *tok = lfirst(lc);

		if (!tok->quoted && tok->string[0] == '+')
		{
			Oid			groupid = get_role_oid(tok->string + 1, true);

			if (OidIsValid(groupid) && is_member_of_role_nosuper(roleid, groupid))
			{
				*by_name = true;
				*group = tok->string + 1;
				return true;
			}
		}
		else if (!tok->quoted && strcmp(tok->string, "all") == 0)
			all = true;
		else if (strcmp(tok->string, user) == 0)
		{
			*by_name = true;
			*group = NULL;
			return true;
		}
	}
	*by_name = false;
	*group = NULL;
	return all;
}

/*
 * The first trust line of pg_hba.conf (the file as it is now) that admits
 * the role, preferring one that names it or its group when named_only.
 */
static void
find_trust_line(const char *user, Oid roleid, bool named_only, TrustLine *found)
{
	FILE	   *file;
	List	   *tok_lines = NIL;
	ListCell   *lc;

	memset(found, 0, sizeof(*found));
	/* errors of the file are PostgreSQL's to report (at reload): stay quiet */
#if PG_VERSION_NUM >= 160000
	{
		char	   *err_msg = NULL;

		/* the tokens live in hba.c's own context until free_auth_file() */
		file = open_auth_file(HbaFileName, DEBUG3, 0, &err_msg);
		if (file == NULL)
			return;
		tokenize_auth_file(HbaFileName, file, &tok_lines, DEBUG3, 0);
	}
#else
	file = AllocateFile(HbaFileName, "r");
	if (file == NULL)
		return;
	(void) tokenize_auth_file(HbaFileName, file, &tok_lines, DEBUG3);
	FreeFile(file);
#endif

	foreach(lc, tok_lines)
	{
		TokenizedAuthLine *tok_line = lfirst(lc);
		HbaLine    *hba;
		bool		by_name;
		char	   *group;

		if (tok_line->err_msg != NULL || !mentions_trust(tok_line))
			continue;
		hba = parse_hba_line(tok_line, DEBUG3);
		if (hba == NULL || hba->auth_method != uaTrust ||
			!user_column_admits(hba->roles, user, roleid, &by_name, &group) ||
			(named_only && !by_name))
			continue;
		found->linenumber = hba->linenumber;
		found->conntype = hba->conntype;
		found->by_name = by_name;
		found->group = group != NULL ? pstrdup(group) : NULL;
		break;
	}
#if PG_VERSION_NUM >= 160000
	free_auth_file(file, 0);
#endif
}

/*
 * PostgreSQL's own report of the failed password login (auth.c, auth_failed):
 * add what the hook noted.  Its errdetail_log keeps the server log's DETAIL.
 */
static void
hba_fallthrough_emit_log_hook(ErrorData *edata)
{
	if (client_hint != NULL && edata->elevel == FATAL &&
		edata->sqlerrcode == ERRCODE_INVALID_PASSWORD)
	{
		if (edata->detail == NULL && client_detail != NULL)
			edata->detail = pstrdup(client_detail);
		if (edata->hint == NULL)
			edata->hint = pstrdup(client_hint);
		client_detail = NULL;
		client_hint = NULL;
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * Note what the client reads with PostgreSQL's FATAL: reason (the code and
 * a hint without pg_hba.conf line numbers) or full (the sentence too).
 */
static void
tell_client(const char *reason, const char *sentence, const char *hint)
{
	if (pg_oauth_client_detail == CLIENT_DETAIL_NONE)
		return;
	client_detail = MemoryContextStrdup(TopMemoryContext,
										pg_oauth_client_detail == CLIENT_DETAIL_FULL ?
										psprintf("reason=%s: %s", reason, sentence) :
										psprintf("reason=%s", reason));
	client_hint = MemoryContextStrdup(TopMemoryContext, hint);
	if (!emit_hook_installed)
	{
		prev_emit_log_hook = emit_log_hook;
		emit_log_hook = hba_fallthrough_emit_log_hook;
		emit_hook_installed = true;
	}
}

/* What the trust line says of this role, and what to do about this login. */
typedef struct Advice
{
	char	   *named;			/* how the trust line names the role */
	char	   *action;
	const char *reason;
	const char *hint;			/* NULL: none for the client */
} Advice;

static Advice
advise(Port *port, const char *user, const TrustLine *trust, const HbaLine *matched)
{
	Advice		a;
	bool		needs_tls = trust->linenumber > 0 && trust->conntype == ctHostSSL &&
		!port->ssl_in_use;
	bool		below = trust->linenumber > matched->linenumber;

	if (trust->group)
		a.named = psprintf("\"%s\" is a member of \"%s\", which trust line %d names",
						   user, trust->group, trust->linenumber);
	else
		a.named = psprintf("trust line %d names \"%s\"", trust->linenumber, user);
	a.reason = "hba_password_line";
	if (trust->linenumber == 0)
	{
		a.action = psprintf("no trust line admits \"%s\" (add it to the group the token lines name)",
							user);
		a.hint = NULL;			/* no trust line names it: not known as a token role */
	}
	else if (needs_tls && below)
	{
		a.action = psprintf("connect with TLS (sslmode=verify-full) and move trust line %d above line %d",
							trust->linenumber, matched->linenumber);
		a.hint = "For a token login, connect with TLS (sslmode=verify-full), and the DBA moves "
			"pg_oauth's trust line above the pg_hba.conf line this login matched "
			"(the server log names both).";
	}
	else if (needs_tls)
	{
		a.action = psprintf("connect with TLS (sslmode=verify-full): trust line %d is hostssl",
							trust->linenumber);
		a.reason = "ssl_required";
		a.hint = "For a token login, connect with TLS (sslmode=verify-full).";
	}
	else if (below)
	{
		a.action = psprintf("move trust line %d above line %d", trust->linenumber,
							matched->linenumber);
		a.hint = "For a token login, the DBA moves pg_oauth's trust line above the pg_hba.conf "
			"line this login matched (the server log names both).";
	}
	else
	{
		a.action = psprintf("trust line %d does not match this connection (its type, database or address)",
							trust->linenumber);
		a.hint = "For a token login, no pg_oauth trust line of pg_hba.conf matches this "
			"connection (its type, database or address): the server log names the line "
			"it matched.";
	}
	return a;
}

void
hba_fallthrough_explain(Port *port)
{
	const char *user = port->user_name;
	HbaLine    *matched = port->hba;
	HeapTuple	roletup;
	Oid			roleid;
	bool		no_password;
	TrustLine	trust;
	TrustLine	named_trust;
	MemoryContext cxt;
	MemoryContext old;
	Advice		advice;

	roletup = SearchSysCache1(AUTHNAME, CStringGetDatum(user));
	if (!HeapTupleIsValid(roletup))
		return;					/* PostgreSQL says the role does not exist */
	roleid = ((Form_pg_authid) GETSTRUCT(roletup))->oid;
	(void) SysCacheGetAttr(AUTHNAME, roletup, Anum_pg_authid_rolpassword, &no_password);
	ReleaseSysCache(roletup);

	cxt = AllocSetContextCreate(CurrentMemoryContext, "pg_oauth hba fallthrough",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);

	/* a role with a password may just have typed it wrong: only if a trust line names it */
	find_trust_line(user, roleid, !no_password, &trust);
	if (!no_password && trust.linenumber == 0)
	{
		MemoryContextSwitchTo(old);
		MemoryContextDelete(cxt);
		return;
	}

	advice = advise(port, user, &trust, matched);
	ereport(LOG,
			(errmsg("pg_oauth: login of \"%s\" matched pg_hba.conf line %d (%s, %s), "
					"not a pg_oauth trust line; %s: if this was a token login, %s",
					user, matched->linenumber, conntype_name(matched->conntype),
					hba_authname(matched->auth_method),
					no_password ? psprintf("\"%s\" has no password", user) : advice.named,
					advice.action)));

	/*
	 * The client is told only of lines that name the role (by name or a
	 * +group), found the same way whatever its password: the search above
	 * differs by it, and whether the role has one is never the client's
	 * business.
	 */
	if (no_password)
	{
		find_trust_line(user, roleid, true, &named_trust);
		if (named_trust.linenumber > 0)
			advice = advise(port, user, &named_trust, matched);
	}
	else
		named_trust = trust;	/* already searched by name; advice is its own */
	if (named_trust.linenumber > 0 && named_trust.by_name)
	{
		tell_client(advice.reason,
					psprintf("the login matched pg_hba.conf line %d (%s, %s), not a pg_oauth "
							 "trust line; %s: %s",
							 matched->linenumber, conntype_name(matched->conntype),
							 hba_authname(matched->auth_method), advice.named, advice.action),
					advice.hint);
	}

	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}
