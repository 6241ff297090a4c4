/*-------------------------------------------------------------------------
 *
 * hba_fallthrough.c
 *	  Say in the server log when a token login landed on a password line.
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
#include "utils/memutils.h"
#include "utils/syscache.h"

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

void
hba_fallthrough_log(Port *port)
{
	const char *user = port->user_name;
	HbaLine    *matched = port->hba;
	HeapTuple	roletup;
	Oid			roleid;
	bool		no_password;
	TrustLine	trust;
	MemoryContext cxt;
	MemoryContext old;
	StringInfoData why;
	bool		needs_tls;
	bool		below;

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
	if (no_password || trust.linenumber > 0)
	{
		initStringInfo(&why);
		if (no_password)
			appendStringInfo(&why, "\"%s\" has no password", user);
		else if (trust.group)
			appendStringInfo(&why, "\"%s\" is a member of \"%s\", which trust line %d names",
							 user, trust.group, trust.linenumber);
		else
			appendStringInfo(&why, "trust line %d names \"%s\"", trust.linenumber, user);

		needs_tls = trust.linenumber > 0 && trust.conntype == ctHostSSL && !port->ssl_in_use;
		below = trust.linenumber > matched->linenumber;
		if (trust.linenumber == 0)
			appendStringInfo(&why, ": if this was a token login, no trust line admits \"%s\" "
							 "(add it to the group the token lines name)", user);
		else if (needs_tls && below)
			appendStringInfo(&why, ": if this was a token login, connect with TLS "
							 "(sslmode=verify-full) and move trust line %d above line %d",
							 trust.linenumber, matched->linenumber);
		else if (needs_tls)
			appendStringInfo(&why, ": if this was a token login, connect with TLS "
							 "(sslmode=verify-full): trust line %d is hostssl",
							 trust.linenumber);
		else if (below)
			appendStringInfo(&why, ": if this was a token login, move trust line %d above line %d",
							 trust.linenumber, matched->linenumber);
		else
			appendStringInfo(&why, ": if this was a token login, trust line %d does not match "
							 "this connection (its type, database or address)",
							 trust.linenumber);

		ereport(LOG,
				(errmsg("pg_oauth: login of \"%s\" matched pg_hba.conf line %d (%s, %s), "
						"not a pg_oauth trust line; %s",
						user, matched->linenumber, conntype_name(matched->conntype),
						hba_authname(matched->auth_method), why.data)));
	}

	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
}
