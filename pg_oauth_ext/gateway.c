/*-------------------------------------------------------------------------
 *
 * gateway.c
 *	  Gateway sessions: a connection pooler logs in as a role a superuser
 *	  marked with pg_oauth.gateway = on, and every transaction it forwards
 *	  runs as a token's role (oauth.authenticate, transaction_identity.c).
 *
 * Nothing runs as the gateway itself.  Before oauth.authenticate() in a
 * transaction, a gateway session runs only what poolers send on their own
 * (transaction control, DISCARD/RESET/DEALLOCATE/CLOSE/UNLISTEN of
 * everything, SET of the parameters they keep in step with their clients,
 * a "SELECT 1", "SELECT version()" or "SELECT pg_is_in_recovery()" check)
 * and SELECT oauth.authenticate(...) itself.  The check
 * is made where every statement passes: ProcessUtility for utility
 * statements, the planner before it folds a single function, and
 * ExecutorStart for plans made earlier (a statement prepared inside an
 * authenticated transaction and executed after it).
 *
 * While a token identity is active, what would outlive the transaction on
 * the pooled connection is refused (PREPARE, cursors WITH HOLD, LISTEN,
 * LOAD, PREPARE TRANSACTION) and the statement forms of a role change get a
 * clear error; transaction_identity.c undoes the rest at the end.
 *
 * The settings that would write a bound token into the server log are pinned
 * off for the whole session (source "override": no SET, RESET ALL or role
 * setting moves them); a gateway is a pooler's role, not a person's.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/parallel.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "optimizer/planner.h"
#include "tcop/utility.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"

bool		pg_oauth_gateway = false;

static ProcessUtility_hook_type prev_process_utility = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static planner_hook_type prev_planner = NULL;
static object_access_hook_type prev_object_access = NULL;
/* this session has been a gateway: it stays one, whatever sets the setting later */
static bool latched = false;

/* What could write a bound parameter (the token) or a plan constant to the log. */
static const struct
{
	const char *name;
	const char *value;
}			gateway_pins[] =
{
	{"log_parameter_max_length", "0"},
	{"log_parameter_max_length_on_error", "0"},
	{"debug_print_plan", "off"},
	{"debug_print_parse", "off"},
	{"debug_print_rewritten", "off"},
	/* placeholders where these modules are not loaded */
	{"auto_explain.log_parameter_max_length", "0"},
	{"auto_explain.log_verbose", "off"},
	{"pgaudit.log_parameter", "off"},
};

/*
 * Functions poolers call on their own to learn about a server: pgpool-II asks
 * every new server connection for version() before it forwards a client's
 * statement, and checks pg_is_in_recovery().  Built-in, fixed oids, no
 * arguments, nothing to read or change.
 */
static bool
pooler_check_function(Oid funcid)
{
	return funcid == F_VERSION || funcid == F_PG_IS_IN_RECOVERY;
}

/* The parameters poolers set on their server connections to match a client. */
static const char *const pooler_parameters[] = {
	"client_encoding", "datestyle", "timezone", "intervalstyle",
	"standard_conforming_strings", "application_name", "extra_float_digits",
};

/*
 * Pinned at "override": RESET ALL and role settings leave them, but a SET
 * (session source) outranks it, so oauth.authenticate() pins them again
 * before it reads a token.
 */
void
gateway_pin_logging(void)
{
	int			i;

	/* nothing moved them (the usual case): no work, and no GUC stack at commit */
	for (i = 0; i < lengthof(gateway_pins); i++)
	{
		const char *now = GetConfigOption(gateway_pins[i].name, true, false);

		if (now == NULL || strcmp(now, gateway_pins[i].value) != 0)
			break;
	}
	if (i == lengthof(gateway_pins))
		return;

	for (i = 0; i < lengthof(gateway_pins); i++)
		/* DEBUG1: a module loaded without that setting (15's auto_explain) refuses it */
		(void) set_config_option(gateway_pins[i].name, gateway_pins[i].value,
								 PGC_SUSET, PGC_S_OVERRIDE, GUC_ACTION_SET, true,
								 DEBUG1, false);
}

/*
 * Is this a gateway session?  pg_oauth.gateway is superuser-only (ALTER ROLE
 * ... SET by a superuser; the gateway cannot SET, RESET or send it as a
 * startup option), and once a session has been a gateway it stays one: a
 * SET clause of a superuser's function cannot turn it off for a moment.
 */
bool
gateway_session(void)
{
	if (IsParallelWorker() || MyProcPort == NULL)
		return false;
	if (!latched)
	{
		if (!pg_oauth_gateway)
			return false;
		latched = true;
		gateway_pin_logging();
	}
	return true;
}

/* A gateway session whose transaction has no token yet (and is not inside authenticate()). */
static bool
before_authenticate(void)
{
	return gateway_session() && !transaction_identity_active() &&
		!transaction_identity_calling();
}

PGO_NORETURN_PRE static void
refuse_before_authenticate(const char *what)
	PGO_NORETURN_POST;

static void
refuse_before_authenticate(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("gateway session: %s before oauth.authenticate()", what),
			 errdetail("Role \"%s\" is a gateway (pg_oauth.gateway): its transactions run as the role of a token, never as the gateway itself.",
					   GetUserNameFromId(GetSessionUserId(), false)),
			 errhint("Start each transaction with BEGIN; SELECT oauth.authenticate($1); where $1 is the client's token.")));
}

static bool
pooler_parameter(const char *name)
{
	int			i;

	for (i = 0; name != NULL && i < lengthof(pooler_parameters); i++)
		if (pg_strcasecmp(name, pooler_parameters[i]) == 0)
			return true;
	return false;
}

/* Utility statements a pooler sends on its own, with no client behind them. */
static bool
utility_allowed_before_authenticate(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_TransactionStmt:
			switch (((TransactionStmt *) stmt)->kind)
			{
				case TRANS_STMT_PREPARE:
				case TRANS_STMT_COMMIT_PREPARED:
				case TRANS_STMT_ROLLBACK_PREPARED:
					return false;
				default:
					return true;
			}
		case T_DiscardStmt:
			return true;
		case T_DeallocateStmt:
			return ((DeallocateStmt *) stmt)->name == NULL;
		case T_ClosePortalStmt:
			return ((ClosePortalStmt *) stmt)->portalname == NULL;
		case T_UnlistenStmt:
			return ((UnlistenStmt *) stmt)->conditionname == NULL;
		case T_VariableSetStmt:
			{
				VariableSetStmt *set = (VariableSetStmt *) stmt;

				if (set->kind == VAR_RESET_ALL)
					return true;
				return (set->kind == VAR_SET_VALUE || set->kind == VAR_SET_DEFAULT ||
						set->kind == VAR_RESET) && pooler_parameter(set->name);
			}
		default:
			return false;
	}
}

static bool
names_role(const char *name)
{
	return name != NULL &&
		(pg_strcasecmp(name, "role") == 0 || pg_strcasecmp(name, "session_authorization") == 0);
}

/* While a token identity is active: what would outlive the transaction, or leave the role. */
static void
check_utility_with_identity(Node *stmt)
{
	const char *what = NULL;

	switch (nodeTag(stmt))
	{
		case T_VariableSetStmt:
			if (names_role(((VariableSetStmt *) stmt)->name))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("a transaction authenticated by oauth.authenticate() cannot change its role"),
						 errdetail("It runs as the role its token admits until COMMIT or ROLLBACK.")));
			return;
		case T_PrepareStmt:
			what = "PREPARE";
			break;
		case T_DeclareCursorStmt:
			if (((DeclareCursorStmt *) stmt)->options & CURSOR_OPT_HOLD)
				what = "DECLARE ... WITH HOLD";
			break;
		case T_ListenStmt:
			what = "LISTEN";
			break;
		case T_LoadStmt:
			what = "LOAD";
			break;
		case T_TransactionStmt:
			if (((TransactionStmt *) stmt)->kind == TRANS_STMT_PREPARE)
				what = "PREPARE TRANSACTION";
			break;
		default:
			break;
	}
	if (what != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is not allowed in a gateway session", what),
				 errdetail("It would outlive the transaction on a pooled connection that the next client of the pooler gets.")));
}

static void
gateway_process_utility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	if (gateway_session() && !transaction_identity_calling())
	{
		if (transaction_identity_active())
			check_utility_with_identity(pstmt->utilityStmt);
		else if (!utility_allowed_before_authenticate(pstmt->utilityStmt))
			refuse_before_authenticate(psprintf("%s is not allowed",
												GetCommandTagName(CreateCommandTag(pstmt->utilityStmt))));
	}
	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * An expression of "SELECT 1" or "SELECT oauth.authenticate($1, 'role')":
 * constants, parameters, relabelings, and the function itself.
 */
static bool
disallowed_expression(Node *node, void *context)
{
	if (node == NULL)
		return false;
	switch (nodeTag(node))
	{
		case T_Const:
		case T_Param:
		case T_RelabelType:
		case T_List:
		case T_TargetEntry:
			break;
		case T_FuncExpr:
			if (!transaction_identity_function(((FuncExpr *) node)->funcid) &&
				!pooler_check_function(((FuncExpr *) node)->funcid))
				return true;
			break;
		default:
			return true;
	}
	return expression_tree_walker(node, disallowed_expression, context);
}

/* SELECT oauth.authenticate('<the token>'): a literal, however it is escaped */
static bool
token_written_into(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, FuncExpr) && transaction_identity_function(((FuncExpr *) node)->funcid))
	{
		Node	   *arg = linitial(((FuncExpr *) node)->args);

		while (IsA(arg, RelabelType))
			arg = (Node *) ((RelabelType *) arg)->arg;
		if (IsA(arg, Const) && !((Const *) arg)->constisnull)
			return true;
	}
	return expression_tree_walker(node, token_written_into, context);
}

static bool
query_allowed_before_authenticate(Query *query)
{
	return query->commandType == CMD_SELECT && query->utilityStmt == NULL &&
		query->rtable == NIL && query->cteList == NIL &&
		query->setOperations == NULL && !query->hasSubLinks &&
		!query->hasAggs && !query->hasWindowFuncs && !query->hasTargetSRFs &&
		!query->hasModifyingCTE && query->rowMarks == NIL &&
		(query->jointree == NULL ||
		 (query->jointree->fromlist == NIL && query->jointree->quals == NULL)) &&
		query->havingQual == NULL && query->groupClause == NIL &&
		query->sortClause == NIL && query->limitCount == NULL &&
		query->limitOffset == NULL &&
		!disallowed_expression((Node *) query->targetList, NULL);
}

static bool
plan_allowed_before_authenticate(PlannedStmt *stmt)
{
	Plan	   *plan = stmt->planTree;
	ListCell   *lc;

	if (stmt->commandType != CMD_SELECT || stmt->utilityStmt != NULL ||
		stmt->subplans != NIL || stmt->hasModifyingCTE || stmt->rowMarks != NIL ||
		plan == NULL || !IsA(plan, Result) || plan->lefttree != NULL ||
		plan->righttree != NULL || plan->initPlan != NIL || plan->qual != NIL ||
		((Result *) plan)->resconstantqual != NULL)
		return false;
	/* the planner gives a FROM-less SELECT one RTE_RESULT entry */
	foreach(lc, stmt->rtable)
		if (((RangeTblEntry *) lfirst(lc))->rtekind != RTE_RESULT)
			return false;
	return !disallowed_expression((Node *) plan->targetlist, NULL);
}

static PlannedStmt *
#if PG_VERSION_NUM >= 190000
gateway_planner(Query *parse, const char *query_string, int cursorOptions,
				ParamListInfo boundParams, ExplainState *es)
#else
gateway_planner(Query *parse, const char *query_string, int cursorOptions,
				ParamListInfo boundParams)
#endif
{
	/* before the planner evaluates a single function */
	if (before_authenticate())
	{
		if (!query_allowed_before_authenticate(parse))
			refuse_before_authenticate("this statement is not allowed");

		/*
		 * Here a bound token is still a Param (a custom plan makes it a
		 * Const): a Const is the statement's own text.  authenticate()'s
		 * own test reads the text, which escapes can hide.
		 */
		if (token_written_into((Node *) parse->targetList, NULL))
			token_transaction_written_into_statement();
	}
#if PG_VERSION_NUM >= 190000
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams, es);
	return standard_planner(parse, query_string, cursorOptions, boundParams, es);
#else
	if (prev_planner)
		return prev_planner(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
#endif
}

static void
gateway_executor_start(QueryDesc *queryDesc, int eflags)
{
	if (before_authenticate() && !plan_allowed_before_authenticate(queryDesc->plannedstmt))
		refuse_before_authenticate("this statement is not allowed");
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * Every function the executor runs, and the fast-path function call (which
 * passes no other hook): as the gateway, before a token, only
 * oauth.authenticate() itself.  This also covers what runs before the
 * planner or the executor sees a statement: a domain's CHECK while a literal
 * or a bind parameter is converted.
 */
static void
gateway_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					  int subId, void *arg)
{
	if (prev_object_access)
		prev_object_access(access, classId, objectId, subId, arg);
	if (access == OAT_FUNCTION_EXECUTE && classId == ProcedureRelationId &&
		before_authenticate() && !transaction_identity_function(objectId) &&
		!pooler_check_function(objectId))
		refuse_before_authenticate(psprintf("function %s may not run", get_func_name(objectId)));
}

void
gateway_install_hooks(void)
{
	prev_object_access = object_access_hook;
	object_access_hook = gateway_object_access;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = gateway_process_utility;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = gateway_executor_start;
	prev_planner = planner_hook;
	planner_hook = gateway_planner;
}
