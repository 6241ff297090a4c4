/*-------------------------------------------------------------------------
 *
 * admission.c
 *	  What happens after the hook accepted a token: PostgreSQL still has to
 *	  admit the session, and startup options and role settings are applied
 *	  only then.
 *
 * InitPostgres runs authentication inside its startup transaction, then
 * checks the database and the role's login rights and connection limits,
 * applies the startup options and the pg_db_role_setting settings, and
 * commits.  The pre-commit callback of that transaction is therefore the
 * moment the session is really admitted, with every option applied:
 *	- the session must still be exactly the role the token authenticated
 *	  (no "role"/"session_authorization" from any source), else FATAL;
 *	- only then is the login audited "ok" and counted as a success.
 * A backend that exits before that commit (PostgreSQL refused it after
 * the hook) is audited as refused, with the reason PostgreSQL gave.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "storage/ipc.h"
#include "utils/elog.h"
#include "utils/errcodes.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

typedef struct PendingAdmission
{
	bool		pending;
	Oid			roleid;
	AuditRecord rec;
	LoginStatsArgs stats;
	char		refusal[PG_OAUTH_REASON_LEN];	/* set from PostgreSQL's FATAL */
} PendingAdmission;

static PendingAdmission admission;
static bool callbacks_registered = false;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
emit_record(bool ok, const char *reason)
{
	admission.pending = false;
	admission.rec.ok = ok;
	pg_oauth_strlcpy_text(admission.rec.reason, reason, sizeof(admission.rec.reason));
	admission.rec.elapsed_us = (int64) (GetCurrentTimestamp() - admission.rec.at);
	audit_log_record(&admission.rec);
	login_stats_record(admission.stats.issuer,
					   reason, ok, admission.stats.from_cache,
					   admission.stats.key_cache_hit, admission.stats.validation_us,
					   admission.stats.queue_us, admission.rec.elapsed_us);
}

/* The role the session would run as, for the message. */
static const char *
role_name(Oid roleid)
{
	const char *name = OidIsValid(roleid) ? GetUserNameFromId(roleid, true) : NULL;

	return name ? name : "?";
}

static void
admission_xact_callback(XactEvent event, void *arg)
{
	Oid			session_user;
	Oid			current_user;

	if (!admission.pending || event != XACT_EVENT_PRE_COMMIT)
		return;

	session_user = GetSessionUserId();
	current_user = GetUserId();
	if (session_user != admission.roleid || current_user != admission.roleid ||
		GetOuterUserId() != admission.roleid)
	{
		Oid			other = (session_user != admission.roleid) ? session_user : current_user;

		emit_record(false, "startup_option_forbidden");
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("JWT authentication failed for user \"%s\"", admission.rec.role),
				 pg_oauth_client_detail != CLIENT_DETAIL_NONE ?
				 errdetail("reason=startup_option_forbidden") : 0,
				 errdetail_log("reason=startup_option_forbidden: the session would run as role \"%s\"; "
							   "token sessions run only as the role the token authenticated",
							   role_name(other)),
				 errhint("Remove role or session_authorization from the connection options "
						 "and from ALTER ROLE/DATABASE ... SET; SET ROLE after login is subject to normal privileges.")));
	}

	emit_record(true, "ok");
	if (PGO_LOG_AUTHORIZATION)
		ereport(LOG,
				(errmsg("pg_oauth: token login authorized: user=%s issuer=%s subject=%s token_id=%s",
						admission.rec.role,
						admission.rec.issuer ? admission.rec.issuer : "",
						admission.rec.subject ? admission.rec.subject : "",
						admission.rec.token_id ? admission.rec.token_id : ""),
				 errhidestmt(true), errhidecontext(true)));
}

/* PostgreSQL refused the session after the hook: remember why. */
static void
admission_emit_log_hook(ErrorData *edata)
{
	if (admission.pending && edata->elevel >= FATAL && admission.refusal[0] == '\0')
		pg_oauth_strlcpy_text(admission.refusal,
				edata->sqlerrcode == ERRCODE_UNDEFINED_DATABASE ? "unknown_database" :
				"server_refused", sizeof(admission.refusal));
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

static void
admission_exit_callback(int code, Datum arg)
{
	if (admission.pending)
		emit_record(false, admission.refusal[0] ? admission.refusal : "server_refused");
}

/*
 * PostgreSQL refused a login whose token pg_oauth accepted (an OAUTHBEARER
 * login that the pg_ident.conf map refused): audit and count it now, with
 * reason.  False when no token login was waiting; *role: its role as audited.
 */
bool
admission_refuse(const char *reason, const char **role)
{
	if (!admission.pending)
		return false;
	*role = admission.rec.role;
	emit_record(false, reason);
	return true;
}

static const char *
keep(const char *s)
{
	return s ? MemoryContextStrdup(TopMemoryContext, s) : NULL;
}

/*
 * The hook accepted the token for roleid: audit and count it once the
 * startup transaction commits (or as refused if the backend exits first).
 * The identity is copied: the hook's memory may be gone by then.
 */
void
admission_expect(Oid roleid, const AuditRecord *rec, const LoginStatsArgs *stats)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(admission_xact_callback, NULL);
		before_shmem_exit(admission_exit_callback, (Datum) 0);
		prev_emit_log_hook = emit_log_hook;
		emit_log_hook = admission_emit_log_hook;
		callbacks_registered = true;
	}
	admission.roleid = roleid;
	admission.rec = *rec;
	admission.rec.issuer = keep(rec->issuer);
	admission.rec.subject = keep(rec->subject);
	admission.rec.token_id = keep(rec->token_id);
	admission.stats = *stats;
	admission.stats.issuer = keep(stats->issuer);
	admission.refusal[0] = '\0';
	admission.pending = true;
}
