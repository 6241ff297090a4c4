/*-------------------------------------------------------------------------
 *
 * config_guard.c
 *	  Configuration changes that no trigger sees.
 *
 * The configuration tables' statement triggers move the configuration
 * version, which every cached decision and every worker's cached
 * configuration is checked against.  Triggers can be skipped, though:
 * disabled (pg_restore --disable-triggers, ALTER TABLE ... DISABLE
 * TRIGGER), or the extension dropped or altered altogether.  In the
 * configuration database these hooks move the version too, at commit,
 * whenever a statement
 *	- writes a configuration table (the executor, whatever the triggers),
 *	- alters, truncates, renames, copies into or adds triggers to a
 *	  relation of schema oauth, or
 *	- drops anything, or alters the extension (DROP EXTENSION, DROP SCHEMA
 *	  ... CASCADE, DROP OWNED).
 * Logical replication applies rows without the executor's hooks; the
 * triggers are ENABLE ALWAYS for that (sql/src/50-config-database.sql).
 * A utility statement also tells the workers not to trust the triggers'
 * counters for that change (sql/src/80-scale.sql): they read everything.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parsetree.h"
#include "tcop/utility.h"
#include "utils/lsyscache.h"

static ProcessUtility_hook_type prev_process_utility = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;

/* -1: not known yet; the database of a backend never changes */
static int	in_config_database = -1;

static bool
config_database(void)
{
	if (in_config_database < 0)
	{
		char	   *name;

		if (!OidIsValid(MyDatabaseId) || pg_oauth_database == NULL)
			return false;
		name = get_database_name(MyDatabaseId);
		in_config_database = (name != NULL && strcmp(name, pg_oauth_database) == 0) ? 1 : 0;
	}
	return in_config_database == 1;
}

static bool
relation_is_ours(Oid relid)
{
	Oid			nsp = get_namespace_oid("oauth", true);

	return OidIsValid(relid) && OidIsValid(nsp) && get_rel_namespace(relid) == nsp;
}

/* The tables whose rows are configuration (not the audit log, not the key cache). */
static bool
configuration_table(Oid relid)
{
	char	   *name;

	if (!relation_is_ours(relid))
		return false;
	name = get_rel_name(relid);
	return name != NULL &&
		(strcmp(name, "issuers") == 0 || strcmp(name, "role_map") == 0 ||
		 strcmp(name, "revocations") == 0 || strcmp(name, "config_state") == 0);
}

static bool
range_var_is_ours(RangeVar *rv)
{
	return rv != NULL && relation_is_ours(RangeVarGetRelid(rv, NoLock, true));
}

/* Does this utility statement change what a cached decision depended on? */
static bool
utility_changes_configuration(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_DropStmt:
		case T_DropOwnedStmt:
		case T_ReassignOwnedStmt:
		case T_AlterExtensionStmt:
		case T_AlterExtensionContentsStmt:
			return true;
		case T_AlterTableStmt:
			return range_var_is_ours(((AlterTableStmt *) stmt)->relation);
		case T_CreateTrigStmt:
			return range_var_is_ours(((CreateTrigStmt *) stmt)->relation);
		case T_RenameStmt:
			return range_var_is_ours(((RenameStmt *) stmt)->relation);
		case T_AlterObjectSchemaStmt:
			return range_var_is_ours(((AlterObjectSchemaStmt *) stmt)->relation);
		case T_CopyStmt:
			return ((CopyStmt *) stmt)->is_from &&
				range_var_is_ours(((CopyStmt *) stmt)->relation);
		case T_TruncateStmt:
			foreach(lc, ((TruncateStmt *) stmt)->relations)
				if (range_var_is_ours(lfirst(lc)))
					return true;
			return false;
		default:
			return false;
	}
}

static void
config_guard_process_utility(PlannedStmt *pstmt, const char *queryString,
							 bool readOnlyTree, ProcessUtilityContext context,
							 ParamListInfo params, QueryEnvironment *queryEnv,
							 DestReceiver *dest, QueryCompletion *qc)
{
	/* decided before it runs: after a DROP the names resolve no more */
	bool		changes = config_database() &&
		utility_changes_configuration(pstmt->utilityStmt);

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
	/* an error above skips this; an abort later clears the pending change */
	if (changes)
		pg_oauth_note_config_structure_change();
}

/* Does the plan write one of the configuration tables? */
static bool
plan_writes_configuration(PlannedStmt *plan)
{
#if PG_VERSION_NUM >= 190000
	/* 19 keeps the written range-table indexes as a Bitmapset */
	int			rti = -1;

	while ((rti = bms_next_member(plan->resultRelationRelids, rti)) >= 0)
	{
		RangeTblEntry *rte = rt_fetch(rti, plan->rtable);

		if (rte->rtekind == RTE_RELATION && configuration_table(rte->relid))
			return true;
	}
#else
	ListCell   *lc;

	foreach(lc, plan->resultRelations)
	{
		RangeTblEntry *rte = rt_fetch(lfirst_int(lc), plan->rtable);

		if (rte->rtekind == RTE_RELATION && configuration_table(rte->relid))
			return true;
	}
#endif
	return false;
}

static void
config_guard_executor_start(QueryDesc *queryDesc, int eflags)
{
	PlannedStmt *plan = queryDesc->plannedstmt;

	if ((queryDesc->operation != CMD_SELECT || plan->hasModifyingCTE) &&
		!(eflags & EXEC_FLAG_EXPLAIN_ONLY) && config_database() &&
		plan_writes_configuration(plan))
		pg_oauth_note_config_change();
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

void
config_guard_install_hooks(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = config_guard_process_utility;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = config_guard_executor_start;
}
