/*-------------------------------------------------------------------------
 *
 * role_policy.c
 *	  Which privileges a role can reach, and which of them token logins
 *	  refuse (pg_oauth.allow_privileges).
 *
 * A token admits exactly one role, but a session can SET ROLE to any role
 * it is a member of, so the login role's own attributes are not enough:
 * superuser (itself or a role it is a member of at any depth), the
 * server-file/program roles, pg_write_all_data (it could rewrite pg_oauth's
 * own tables), CREATEROLE where it can grant those (before PostgreSQL 16),
 * REPLICATION and BYPASSRLS all count.
 *
 * Membership is walked here through the pg_auth_members syscache rather
 * than with is_member_of_role(): acl.c caches that answer per role, and a
 * cache filled during authentication (no database yet, so no
 * pg_database_owner) would outlive it into the session.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/htup_details.h"
#include "catalog/pg_auth_members.h"
#include "catalog/pg_authid.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/guc.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

PG_FUNCTION_INFO_V1(pg_oauth_fn_role_privileges);

/* pg_oauth.allow_privileges: the raw setting and the parsed bits */
char	   *pg_oauth_allow_privileges_string = NULL;
static int	allowed_privileges = 0;

static const struct
{
	int			bit;
	const char *name;
}			privilege_names[] = {
	{ROLE_PRIV_SUPERUSER, "superuser"},
	{ROLE_PRIV_CREATEROLE, "createrole"},
	{ROLE_PRIV_REPLICATION, "replication"},
	{ROLE_PRIV_BYPASSRLS, "bypassrls"},
	{ROLE_PRIV_EXECUTE_SERVER_PROGRAM, "pg_execute_server_program"},
	{ROLE_PRIV_READ_SERVER_FILES, "pg_read_server_files"},
	{ROLE_PRIV_WRITE_SERVER_FILES, "pg_write_server_files"},
	{ROLE_PRIV_WRITE_ALL_DATA, "pg_write_all_data"},
};

const char *
role_privilege_name(int bit)
{
	int			i;

	for (i = 0; i < lengthof(privilege_names); i++)
		if (privilege_names[i].bit == bit)
			return privilege_names[i].name;
	return "unknown";
}

static int
privilege_bit(const char *name)
{
	int			i;

	for (i = 0; i < lengthof(privilege_names); i++)
		if (pg_strcasecmp(privilege_names[i].name, name) == 0)
			return privilege_names[i].bit;
	return 0;
}

/* "superuser, replication" -> bits; "" allows nothing.  GUC check hook. */
bool
check_allow_privileges(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval);
	List	   *names;
	ListCell   *lc;
	int			bits = 0;
	int		   *result;

	if (!SplitIdentifierString(raw, ',', &names))
	{
		GUC_check_errdetail("List syntax is invalid.");
		return false;
	}
	foreach(lc, names)
	{
		const char *name = lfirst(lc);
		int			bit = privilege_bit(name);

		if (bit == 0)
		{
			GUC_check_errdetail("Unknown privilege \"%s\".", name);
			GUC_check_errhint("Use superuser, createrole, replication, bypassrls, "
							  "pg_execute_server_program, pg_read_server_files, pg_write_server_files "
							  "or pg_write_all_data.");
			return false;
		}
		bits |= bit;
	}
	/* GUC "extra" memory is the GUC machinery's own (a context since 16) */
#if PG_VERSION_NUM >= 160000
	result = (int *) guc_malloc(LOG, sizeof(int));
#else
	result = (int *) malloc(sizeof(int));
#endif
	if (result == NULL)
		return false;
	*result = bits;
	*extra = result;
	return true;
}

void
assign_allow_privileges(const char *newval, void *extra)
{
	allowed_privileges = *(int *) extra;
}

/* Is this privilege allowed for token logins (allow_privileges, allow_superuser)? */
bool
role_privilege_allowed(int bit)
{
	if (bit == ROLE_PRIV_SUPERUSER && pg_oauth_allow_superuser)
		return true;
	return (allowed_privileges & bit) != 0;
}

/* The privileges a role's own pg_authid row and its oid carry. */
static int
own_privileges(Oid roleid, Form_pg_authid form)
{
	int			bits = 0;

	if (form->rolsuper)
		bits |= ROLE_PRIV_SUPERUSER;
#if PG_VERSION_NUM < 160000
	/* before 16, CREATEROLE may grant itself any role but superuser ones */
	if (form->rolcreaterole)
		bits |= ROLE_PRIV_CREATEROLE;
#endif
	if (form->rolreplication)
		bits |= ROLE_PRIV_REPLICATION;
	if (form->rolbypassrls)
		bits |= ROLE_PRIV_BYPASSRLS;
	if (roleid == ROLE_PG_EXECUTE_SERVER_PROGRAM)
		bits |= ROLE_PRIV_EXECUTE_SERVER_PROGRAM;
	if (roleid == ROLE_PG_READ_SERVER_FILES)
		bits |= ROLE_PRIV_READ_SERVER_FILES;
	if (roleid == ROLE_PG_WRITE_SERVER_FILES)
		bits |= ROLE_PRIV_WRITE_SERVER_FILES;
	/* writes every table, pg_oauth's key cache and audit log included */
	if (roleid == ROLE_PG_WRITE_ALL_DATA)
		bits |= ROLE_PRIV_WRITE_ALL_DATA;
	return bits;
}

/*
 * Bring a role's rows of pg_authid and pg_auth_members into this backend's
 * caches while the client answers the password request.  A new backend's
 * first lookups read the catalogs (about 0.1 ms); done here they overlap the
 * client's round trip instead of following the decision.  check_role() does
 * the lookups again after the decision, from the caches, having taken in
 * invalidations: nothing found here decides anything.  Its time depends on
 * the role (whether it exists, how many memberships it has), as the
 * pg_hba.conf match of a +group before it already does, and it runs inside
 * the client's round trip.
 */
void
role_policy_prefetch(const char *rolename)
{
	HeapTuple	tup;
	Oid			roleid;
	RolePrivilege found[ROLE_PRIV_COUNT];
	int			nfound;

	tup = SearchSysCache1(AUTHNAME, CStringGetDatum(rolename));
	if (!HeapTupleIsValid(tup))
		return;
	roleid = ((Form_pg_authid) GETSTRUCT(tup))->oid;
	ReleaseSysCache(tup);
	(void) role_reachable_privileges(roleid, found, ROLE_PRIV_COUNT, &nfound);
}

/*
 * Every privilege the role can reach: its own, and those of every role it
 * is a member of at any depth (whatever the INHERIT/SET options: either
 * one is enough to use them).  For each privilege found, *via gets the
 * first role that carries it (the role itself or a granted role).  Uses
 * only shared catalogs: callable during authentication.
 */
int
role_reachable_privileges(Oid roleid, RolePrivilege *found, int max_found, int *nfound)
{
	List	   *agenda = list_make1_oid(roleid);
	ListCell   *lc;
	int			bits = 0;

	*nfound = 0;
	foreach(lc, agenda)
	{
		Oid			current = lfirst_oid(lc);
		HeapTuple	tup;
		CatCList   *memberships;
		int			own;
		int			i;

		tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(current));
		if (!HeapTupleIsValid(tup))
			continue;
		own = own_privileges(current, (Form_pg_authid) GETSTRUCT(tup));
		for (i = 0; i < lengthof(privilege_names); i++)
		{
			int			bit = privilege_names[i].bit;

			if ((own & bit) && !(bits & bit) && *nfound < max_found)
			{
				found[*nfound].bit = bit;
				found[*nfound].via = current;
				pg_oauth_strlcpy_text(found[*nfound].via_name,
						NameStr(((Form_pg_authid) GETSTRUCT(tup))->rolname), NAMEDATALEN);
				(*nfound)++;
			}
		}
		bits |= own;
		ReleaseSysCache(tup);

		memberships = SearchSysCacheList1(AUTHMEMMEMROLE, ObjectIdGetDatum(current));
		for (i = 0; i < memberships->n_members; i++)
		{
			Form_pg_auth_members m =
				(Form_pg_auth_members) GETSTRUCT(&memberships->members[i]->tuple);

			/* the list is also the visited set: each role is walked once */
			agenda = list_append_unique_oid(agenda, m->roleid);
		}
		ReleaseSysCacheList(memberships);
	}
	list_free(agenda);
	return bits;
}

/*
 * oauth.role_privileges(role name): every privilege the role can reach,
 * through which role, and whether token logins allow it.
 */
Datum
pg_oauth_fn_role_privileges(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Name		rolename = PG_GETARG_NAME(0);
	HeapTuple	tup;
	Oid			roleid;
	RolePrivilege found[ROLE_PRIV_COUNT];
	int			nfound;
	int			i;

	InitMaterializedSRF(fcinfo, 0);
	tup = SearchSysCache1(AUTHNAME, NameGetDatum(rolename));
	if (!HeapTupleIsValid(tup))
		return (Datum) 0;
	roleid = ((Form_pg_authid) GETSTRUCT(tup))->oid;
	ReleaseSysCache(tup);

	(void) role_reachable_privileges(roleid, found, ROLE_PRIV_COUNT, &nfound);
	for (i = 0; i < nfound; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(role_privilege_name(found[i].bit));
		values[1] = CStringGetTextDatum(found[i].via_name);
		values[2] = BoolGetDatum(role_privilege_allowed(found[i].bit));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
