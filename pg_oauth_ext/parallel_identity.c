/*-------------------------------------------------------------------------
 *
 * parallel_identity.c
 *	  The session's token identity (claims, issuer, subject, token id,
 *	  expiry, role) carried into parallel workers, so that oauth.claim() and
 *	  its kin can be PARALLEL SAFE: a row-level security policy written
 *	  USING (tenant = oauth.claim('tenant_id')) keeps its parallel scans.
 *
 * Why settings.  A parallel worker is a fresh process: it gets the
 * leader's GUC values (SerializeGUCState/RestoreGUCState) and libraries, not
 * its memory.  Of the two routes to a worker, settings are the one
 * PostgreSQL itself uses for per-session state, they travel inside the
 * query's own DSM segment (any size, nothing to reserve or to run out of),
 * and they live exactly as long as the worker.  Shared memory keyed by the
 * leader would need a slot per backend sized for the largest claims, or an
 * area that can fill up.  SerializeGUCState skips PGC_POSTMASTER and
 * PGC_INTERNAL settings and those at their built-in default, so these are
 * PGC_SUSET, set by this file with source PGC_S_OVERRIDE.  Two of them, so
 * that ending a transaction's identity never has to rebuild the login's:
 *
 *	  pg_oauth.parallel_session_identity: what a token login left; set once,
 *	  at login.
 *	  pg_oauth.parallel_transaction_identity: oauth.authenticate()'s, for
 *	  one transaction; emptied when it ends.
 *
 * Why nobody else can set them.  The check hook is the one gate every value
 * passes (SET, RESET excepted, set_config(), a function's SET clause, ALTER
 * ROLE/DATABASE SET and ALTER SYSTEM when validated, startup options, the
 * configuration file, a placeholder's value when the library defines the
 * setting): it accepts a value only while this file sets it, or while a
 * parallel worker restores its leader's settings (InitializingParallelWorker,
 * source PGC_S_OVERRIDE, and the value names the leader's pid: its lock
 * group leader, joined before settings are restored).  Privilege does not
 * matter: a superuser, a SECURITY DEFINER function of one, or a role granted
 * SET on the parameter is refused the same.  RESET and SET ... TO DEFAULT
 * skip check hooks, but PGC_S_OVERRIDE makes the value its own reset value,
 * so they change nothing; RESET ALL and DISCARD ALL skip the settings
 * (GUC_NO_RESET_ALL).  The prefix is reserved (MarkGUCPrefixReserved), so no
 * placeholder of these names can exist in a server that preloads us; one that
 * does not defines no settings and has no token identity to carry.
 *
 * Why a leftover transaction identity is harmless.  Its value also names the
 * leader's local transaction id; a worker takes it only in that
 * transaction.  It is emptied at COMMIT or ROLLBACK with PGC_S_OVERRIDE,
 * which also rewrites a value a RESET inside the transaction stacked for
 * the rollback to restore; that must raise no error there (WARNING), and
 * need not succeed: in the next transaction a worker sees what the leader
 * sees, the login's identity or none.  The leader itself always answers
 * from its own memory (session_state.c).
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/parallel.h"
#include "catalog/pg_authid.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"

/* 17 moved a backend's local transaction id into PGPROC.vxid */
#if PG_VERSION_NUM >= 170000
#define PGO_PROC_LXID(proc)	((proc)->vxid.lxid)
#else
#define PGO_PROC_LXID(proc)	((proc)->lxid)
#endif

#define SESSION_SETTING		"pg_oauth.parallel_session_identity"
#define TRANSACTION_SETTING	"pg_oauth.parallel_transaction_identity"

/* The decoded value: the GUC machinery owns it ("extra"), one allocation. */
typedef struct LeaderIdentity
{
	bool		present;		/* false: no identity for this worker */
	OAuthSession session;		/* strings point into data */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} LeaderIdentity;

static char *session_setting = NULL;
static char *transaction_setting = NULL;

/* true only around this file's own set_config_option() calls */
static bool publishing = false;

/* in a parallel worker: its leader's identities, as the settings hold them */
static LeaderIdentity *leader_session = NULL;
static LeaderIdentity *leader_transaction = NULL;

static void *
guc_extra_alloc(Size size)
{
	/* GUC "extra" memory is the GUC machinery's own (a context since 16) */
#if PG_VERSION_NUM >= 160000
	return guc_malloc(LOG, size);
#else
	return malloc(size);
#endif
}

static void
guc_extra_free(void *p)
{
#if PG_VERSION_NUM >= 160000
	guc_free(p);
#else
	free(p);
#endif
}

/* One field: "-" for NULL, else "<length>:<bytes>". */
static void
put_field(StringInfo buf, const char *s)
{
	if (s == NULL)
		appendStringInfoChar(buf, '-');
	else
	{
		appendStringInfo(buf, "%zu:", strlen(s));
		appendStringInfoString(buf, s);
	}
}

/*
 * The value for an identity: "<pid> <lxid> " and the fields issuer, subject,
 * token id, role, claims (JSON text) and expiry (microseconds) in order.
 * Lengths, not separators: claims hold any character but NUL.
 */
static char *
encode_identity(const OAuthSession *s, LocalTransactionId lxid)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "%d %u ", MyProcPid, lxid);
	put_field(&buf, s->issuer);
	put_field(&buf, s->subject);
	put_field(&buf, s->token_id);
	put_field(&buf, s->role);
	put_field(&buf, s->claims);
	if (s->has_expires_at)
		appendStringInfo(&buf, INT64_FORMAT, (int64) s->expires_at);
	else
		appendStringInfoChar(&buf, '-');
	return buf.data;
}

static bool
read_number(const char **p, uint64 *value)
{
	const char *s = *p;
	uint64		v = 0;

	if (*s < '0' || *s > '9')
		return false;
	while (*s >= '0' && *s <= '9')
	{
		if (v > (PG_UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (*s++ - '0');
	}
	*p = s;
	*value = v;
	return true;
}

/* A field of encode_identity(): copied, NUL-terminated, to *out (at *dst). */
static bool
read_field(const char **p, char **dst, char **out)
{
	uint64		len;

	if (**p == '-')
	{
		(*p)++;
		*out = NULL;
		return true;
	}
	if (!read_number(p, &len) || **p != ':' || strnlen(*p + 1, len) < len)
		return false;
	*out = *dst;
	memcpy(*dst, *p + 1, len);
	(*dst)[len] = '\0';
	*dst += len + 1;
	*p += len + 1;
	return true;
}

/* Decode a value into one allocation the GUC machinery can own; NULL if malformed. */
static LeaderIdentity *
decode_identity(const char *value, int *pid, LocalTransactionId *lxid)
{
	LeaderIdentity *id;
	const char *p = value;
	char	   *dst;
	uint64		n;

	if (!read_number(&p, &n) || n > INT_MAX || *p++ != ' ')
		return NULL;
	*pid = (int) n;
	if (!read_number(&p, &n) || n > PG_UINT32_MAX || *p++ != ' ')
		return NULL;
	*lxid = (LocalTransactionId) n;

	/* the fields are never longer, with their NULs, than the value itself */
	id = guc_extra_alloc(offsetof(LeaderIdentity, data) + strlen(p) + 6);
	if (id == NULL)
		return NULL;
	memset(id, 0, offsetof(LeaderIdentity, data));
	dst = id->data;
	if (!read_field(&p, &dst, &id->session.issuer) ||
		!read_field(&p, &dst, &id->session.subject) ||
		!read_field(&p, &dst, &id->session.token_id) ||
		!read_field(&p, &dst, &id->session.role) ||
		!read_field(&p, &dst, &id->session.claims))
		goto malformed;
	if (*p == '-' && p[1] == '\0')
		id->session.has_expires_at = false;
	else
	{
		bool		negative = (*p == '-');

		if (negative)
			p++;
		if (!read_number(&p, &n) || *p != '\0' || n > (uint64) PG_INT64_MAX)
			goto malformed;
		id->session.has_expires_at = true;
		id->session.expires_at = (TimestampTz) (negative ? -(int64) n : (int64) n);
	}
	id->session.active = true;
	id->present = true;
	return id;

malformed:
	guc_extra_free(id);
	return NULL;
}

/*
 * The gate of both settings (see the head of the file).  An empty value,
 * the built-in default, is no identity.
 */
static bool
check_identity(char **newval, void **extra, GucSource source, bool transaction)
{
	bool		restoring = IsParallelWorker() && InitializingParallelWorker &&
		source == PGC_S_OVERRIDE;
	LeaderIdentity *id;
	int			pid;
	LocalTransactionId lxid;
	PGPROC	   *leader;

	if (!publishing && !restoring &&
		!(source == PGC_S_DEFAULT && (*newval == NULL || (*newval)[0] == '\0')))
	{
		GUC_check_errcode(ERRCODE_INSUFFICIENT_PRIVILEGE);
		GUC_check_errmsg("parameter \"%s\" is set by pg_oauth alone",
						 transaction ? TRANSACTION_SETTING : SESSION_SETTING);
		GUC_check_errdetail("It carries the claims of the session's token to parallel workers; nothing else may set it.");
		return false;
	}
	*extra = NULL;
	/*
	 * Only a parallel worker reads the value; the leader answers from its own
	 * memory, and wrote this value itself: no decoding at every login.
	 */
	if (!restoring || *newval == NULL || (*newval)[0] == '\0')
		return true;

	id = decode_identity(*newval, &pid, &lxid);
	if (id == NULL)
	{
		GUC_check_errdetail("The value is not one pg_oauth wrote.");
		return false;
	}
	leader = MyProc->lockGroupLeader;
	if (leader == NULL || leader == MyProc || leader->pid != pid)
	{
		guc_extra_free(id);
		GUC_check_errdetail("The value was not written by this worker's leader.");
		return false;
	}
	/* a transaction's identity counts in that transaction only */
	if (transaction && PGO_PROC_LXID(leader) != lxid)
		id->present = false;
	*extra = id;
	return true;
}

static bool
check_session_identity(char **newval, void **extra, GucSource source)
{
	return check_identity(newval, extra, source, false);
}

static bool
check_transaction_identity(char **newval, void **extra, GucSource source)
{
	return check_identity(newval, extra, source, true);
}

/*
 * In a parallel worker the claim functions answer from what the leader
 * sent: its transaction's identity if it has one, else its login's.  In
 * the leader its own memory (session_state.c) is the truth: nothing to do.
 */
static void
adopt_leader_identity(void)
{
	const LeaderIdentity *id = leader_transaction;

	if (id == NULL || !id->present)
		id = leader_session;
	session_state_adopt(id != NULL && id->present ? &id->session : NULL);
}

static void
assign_session_identity(const char *newval, void *extra)
{
	if (!IsParallelWorker())
		return;
	leader_session = (LeaderIdentity *) extra;
	adopt_leader_identity();
}

static void
assign_transaction_identity(const char *newval, void *extra)
{
	if (!IsParallelWorker())
		return;
	leader_transaction = (LeaderIdentity *) extra;
	adopt_leader_identity();
}

void
parallel_identity_define_settings(void)
{
	/* not in SHOW ALL or pg_settings, no file, no RESET ALL / DISCARD ALL */
	int			flags = GUC_NO_SHOW_ALL | GUC_SUPERUSER_ONLY | GUC_NOT_IN_SAMPLE |
		GUC_DISALLOW_IN_FILE | GUC_DISALLOW_IN_AUTO_FILE | GUC_NO_RESET_ALL;

	DefineCustomStringVariable(SESSION_SETTING,
							   "The token identity of this session's login, for its parallel workers (set by pg_oauth only).",
							   NULL,
							   &session_setting,
							   "",
							   PGC_SUSET, flags,
							   check_session_identity, assign_session_identity, NULL);
	DefineCustomStringVariable(TRANSACTION_SETTING,
							   "The token identity of oauth.authenticate() in this transaction, for its parallel workers (set by pg_oauth only).",
							   NULL,
							   &transaction_setting,
							   "",
							   PGC_SUSET, flags,
							   check_transaction_identity, assign_transaction_identity, NULL);
}

/* Set one of the settings as pg_oauth itself; what set_config_option returns. */
static int
publish(const char *name, const char *value, int elevel)
{
	int			result;

	publishing = true;
	PG_TRY();
	{
		/* PGC_S_OVERRIDE: the value is also what RESET returns to */
		result = set_config_option_ext(name, value, PGC_SUSET, PGC_S_OVERRIDE,
									   BOOTSTRAP_SUPERUSERID, GUC_ACTION_SET,
									   true, elevel, false);
	}
	PG_FINALLY();
	{
		publishing = false;
	}
	PG_END_TRY();
	return result;
}

/* A token login's identity, for the whole session (an error refuses the login). */
void
parallel_identity_publish_login(const OAuthSession *s)
{
	char	   *value = encode_identity(s, InvalidLocalTransactionId);

	(void) publish(SESSION_SETTING, value, ERROR);
	pfree(value);
}

/* oauth.authenticate()'s identity, bound to this transaction. */
void
parallel_identity_publish_transaction(const OAuthSession *s)
{
	char	   *value = encode_identity(s, PGO_PROC_LXID(MyProc));

	(void) publish(TRANSACTION_SETTING, value, ERROR);
	pfree(value);
}

/*
 * The transaction ended (its COMMIT or ABORT callback): no error may escape
 * here, and none needs to, as a value left behind names a finished
 * transaction.
 */
void
parallel_identity_end_transaction(void)
{
	if (transaction_setting == NULL || transaction_setting[0] == '\0')
		return;
	if (publish(TRANSACTION_SETTING, "", WARNING) <= 0)
		ereport(WARNING,
				(errmsg("pg_oauth could not empty %s", TRANSACTION_SETTING),
				 errdetail("Parallel workers of later transactions ignore the value it still holds.")));
}
