/*-------------------------------------------------------------------------
 *
 * pg_oauth.h
 *	  Declarations shared by the pg_oauth hook, queue, workers and session
 *	  functions.
 *
 * The C side knows nothing about JWTs: it moves an opaque token from the
 * client to a validator worker and a decision back, and enforces it.
 *
 *-------------------------------------------------------------------------
 */
/* not PG_OAUTH_H: PostgreSQL 18's libpq/oauth.h uses that guard */
#ifndef PG_OAUTH_EXT_H
#define PG_OAUTH_EXT_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "libpq/libpq-be.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "utils/dsa.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#if PG_VERSION_NUM < 150000
#error "pg_oauth needs PostgreSQL 15 or later (shmem_request_hook)"
#endif

/*
 * What differs between the majors pg_oauth builds on (15 to 19).
 */
/* 18 replaced the postfix pg_attribute_noreturn() by a prefix pg_noreturn */
#if PG_VERSION_NUM >= 180000
#define PGO_NORETURN_PRE pg_noreturn
#define PGO_NORETURN_POST
#else
#define PGO_NORETURN_PRE
#define PGO_NORETURN_POST pg_attribute_noreturn()
#endif

/* 17 numbers backends by ProcNumber from 0; before, BackendId from 1 */
#if PG_VERSION_NUM >= 170000
#include "storage/procnumber.h"
#define PGO_MY_SLOT()	((int) MyProcNumber)
#else
#include "storage/backendid.h"
#define PGO_MY_SLOT()	(MyBackendId == InvalidBackendId ? -1 : (int) MyBackendId - 1)
#endif

/* 18 made log_connections a list of aspects; "authorization" is ours */
#if PG_VERSION_NUM >= 180000
#include "tcop/backend_startup.h"
#define PGO_LOG_AUTHORIZATION	((log_connections & LOG_CONNECTION_AUTHORIZATION) != 0)
#else
#include "postmaster/postmaster.h"
#define PGO_LOG_AUTHORIZATION	Log_connections
#endif

/* Hard ceiling of pg_oauth.max_token_bytes (the password packet limit). */
#define PG_OAUTH_TOKEN_CEILING		65530
/* Per-slot buffer: the token going in, the decision (claims JSON...) coming out. */
#define PG_OAUTH_SLOT_DATA_SIZE		(128 * 1024)
#define PG_OAUTH_MAX_WORKERS		32
#define PG_OAUTH_MAX_SLOTS			(4 * PG_OAUTH_MAX_WORKERS)
#define PG_OAUTH_REASON_LEN			32
#define PG_OAUTH_DETAIL_LEN			512
#define PG_OAUTH_WORKER_ERROR_LEN	256
#define PG_OAUTH_KID_LEN			64
#define PG_OAUTH_ALG_LEN			16
/* a SHA-256 digest (sha256.c): tokens and identities are compared by it */
#define PG_OAUTH_TOKEN_HASH_LEN		32

/* GUCs (pg_oauth.c) */
extern char *pg_oauth_database;
extern int	pg_oauth_workers;
extern char *pg_oauth_python_path;
extern bool pg_oauth_require_ssl;
extern int	pg_oauth_timeout_ms;
extern int	pg_oauth_max_token_bytes;
extern bool pg_oauth_allow_superuser;
extern int	pg_oauth_client_detail;
extern int	pg_oauth_session_expiry;
extern int	pg_oauth_session_expiry_grace;
extern bool pg_oauth_audit_log;
extern int	pg_oauth_audit_retention;
extern int	pg_oauth_rate_limit_failures;
extern int	pg_oauth_rate_limit_window;
extern int	pg_oauth_rate_limit_max_delay;
extern bool pg_oauth_decision_cache;
extern char *pg_oauth_allow_privileges_string;
extern int	pg_oauth_identity_memory;

typedef enum SessionExpiryMode
{
	SESSION_EXPIRY_OFF,
	SESSION_EXPIRY_IDLE,		/* end an expired session when it waits for a command */
	SESSION_EXPIRY_ALWAYS		/* end it at once, even mid-query */
} SessionExpiryMode;

typedef enum ClientDetailLevel
{
	CLIENT_DETAIL_NONE,			/* only "JWT authentication failed" */
	CLIENT_DETAIL_REASON,		/* plus the reason code */
	CLIENT_DETAIL_FULL			/* plus the validator's sentence */
} ClientDetailLevel;

/*
 * One request/response slot.  Ownership moves with the state; the data buffer
 * is only touched by the current owner, so the queue lock is held only for
 * state transitions.
 */
typedef enum SlotState
{
	SLOT_FREE = 0,
	SLOT_FILLING,				/* backend is copying the token in */
	SLOT_PENDING,				/* waiting for a worker */
	SLOT_WORKING,				/* a worker owns it */
	SLOT_DONE,					/* decision written, backend owns it again */
	SLOT_ABANDONED				/* backend left; worker frees it when done */
} SlotState;

typedef struct TokenSlot
{
	SlotState	state;
	uint64		ticket;			/* unique per request */
	PGPROC	   *backend;		/* to wake the waiting backend */
	int			worker;			/* index of the worker that took it, or -1 */

	/* request */
	char		role[NAMEDATALEN];
	char		database[NAMEDATALEN];
	char		client_addr[64];	/* empty: Unix socket */
	uint32		addr_hash;		/* of client_addr: addresses compared quickly */
	bool		one_at_a_time;	/* its address is braked (rate_limit.c) */
	bool		ssl;
	int			token_len;

	/* response */
	bool		ok;
	char		reason[PG_OAUTH_REASON_LEN];
	char		detail[PG_OAUTH_DETAIL_LEN];
	bool		has_expires_at;
	TimestampTz expires_at;
	char		kid[PG_OAUTH_KID_LEN];
	char		alg[PG_OAUTH_ALG_LEN];
	int			key_cache_hit;	/* 1 hit, 0 miss, -1 unknown */
	int			max_sessions;	/* -1: no limit */
	int64		validation_us;	/* time the worker spent, -1 unknown */
	/* offsets into data[] of NUL-terminated strings; -1 when NULL */
	int			off_issuer;
	int			off_subject;
	int			off_token_id;
	int			off_claims;
	int			off_roles;		/* roles as consecutive strings */
	int			n_roles;

#ifdef PG_OAUTH_TRACE
	TimestampTz trace[6];		/* worker-side phase times, TRACE_W_* */
#endif
	char		data[PG_OAUTH_SLOT_DATA_SIZE];
} TokenSlot;

/*
 * Login phase timing, compiled in only by `make TRACE=1` (-DPG_OAUTH_TRACE):
 * each successful token login then logs one "pg_oauth trace:" line with the
 * microseconds of each phase (bench/trace_profile.py reads them).  Not for
 * production builds: it adds a log line per login.
 */
#define TRACE_B_START		0	/* hook entered */
#define TRACE_B_TOKEN		1	/* token read from the client */
#define TRACE_B_HASHED		2	/* decision-cache hash computed */
#define TRACE_B_SUBMITTED	3	/* slot pending, worker woken */
#define TRACE_B_ANSWERED	4	/* backend saw the worker's answer */
#define TRACE_B_CHECKED		5	/* role checks, registry, cache store done */
#define TRACE_B_ADMISSION	6	/* audit record and counters' arguments handed
								 * to admission.c, which writes them once
								 * PostgreSQL admits the session: after the
								 * trace line, so outside it */
#define TRACE_W_CLAIMED		0	/* worker took the request */
#define TRACE_W_TXN			1	/* worker starts its transaction */
#define TRACE_W_CALL		2	/* SPI connected, snapshot taken: the call */
#define TRACE_W_RESULT		3	/* result row copied into the slot */
#define TRACE_W_COMMITTED	4	/* transaction committed */
#define TRACE_W_HANDED		5	/* slot marked done, backend about to be woken */
#ifdef PG_OAUTH_TRACE
/* trace.c */
extern TimestampTz pg_oauth_trace_backend[7];
extern TimestampTz pg_oauth_trace_worker[6];
extern void trace_log_login(bool from_cache);
#define TRACE_SLOT(s, i) ((s)->trace[i] = GetCurrentTimestamp())
#define TRACE_BACKEND(i) (pg_oauth_trace_backend[i] = GetCurrentTimestamp())
#else
#define TRACE_SLOT(s, i) ((void) 0)
#define TRACE_BACKEND(i) ((void) 0)
#endif

typedef enum WorkerState
{
	WORKER_STOPPED = 0,
	WORKER_STARTING,			/* connected, pyhook not loaded yet */
	WORKER_NOT_READY,			/* extension missing or warm-up failed */
	WORKER_IDLE,
	WORKER_BUSY
} WorkerState;

typedef struct WorkerInfo
{
	pid_t		pid;
	PGPROC	   *proc;
	WorkerState state;
	bool		wakeup_pending; /* a backend has set our latch for a request */
	uint64		requests;
	char		last_error[PG_OAUTH_WORKER_ERROR_LEN];
} WorkerInfo;

/* last unknown-kid refetch per issuer, shared by all workers */
#define PG_OAUTH_REFETCH_ISSUERS	32

typedef struct KidRefetch
{
	bool		used;
	uint8		issuer_hash[PG_OAUTH_TOKEN_HASH_LEN];	/* issuers compared whole */
	TimestampTz at;
} KidRefetch;

typedef struct PgOAuthShared
{
	LWLock	   *lock;			/* protects slot states and worker states */
	ConditionVariable slot_freed;
	pg_atomic_uint64 config_version;
	/* moved with config_version by changes no trigger may have seen (config_guard.c) */
	pg_atomic_uint64 config_structure;
	/* a standby's housekeeper: the replayed version it applied, and when */
	pg_atomic_uint64 followed_version;
	pg_atomic_uint64 followed_at;	/* a TimestampTz; 0: not yet */
	/* configuration version last logged as loaded (worker_log.c), under lock */
	uint64		config_logged_table;
	uint64		config_logged_version;
	uint64		next_ticket;
	int			refresher;		/* worker refreshing keys, -1: none (one at a time) */
	int			nworkers;
	int			nslots;
	WorkerInfo	workers[PG_OAUTH_MAX_WORKERS];
	KidRefetch	kid_refetch[PG_OAUTH_REFETCH_ISSUERS];
	TokenSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} PgOAuthShared;

extern PgOAuthShared *pg_oauth_shared;

/* pg_oauth.c */
extern bool pg_oauth_loaded_at_startup;

/* token_queue.c */
extern Size token_queue_shmem_size(void);
/* The locks of the "pg_oauth" tranche, one per shared structure. */
typedef enum PgOAuthLock
{
	PG_OAUTH_LOCK_QUEUE = 0,	/* token_queue.c: slots and worker states */
	PG_OAUTH_LOCK_SESSIONS,		/* session_registry.c */
	PG_OAUTH_LOCK_AUDIT,		/* audit_log.c: the audit ring */
	PG_OAUTH_LOCK_STATS,		/* login_stats.c */
	PG_OAUTH_LOCK_DECISIONS,	/* decision_cache.c */
	PG_OAUTH_NUM_LOCKS
} PgOAuthLock;

/* the lock of one shared structure (after shmem startup) */
#define pg_oauth_lock(which) (&(GetNamedLWLockTranche("pg_oauth"))[(which)].lock)
extern void token_queue_shmem_startup(void);
extern int	token_queue_nslots(void);

/*
 * What the backend gets back from a validation request.  Strings live in the
 * caller's memory context.
 */
typedef struct TokenDecision
{
	bool		ok;
	char		reason[PG_OAUTH_REASON_LEN];
	char		detail[PG_OAUTH_DETAIL_LEN];
	char	   *issuer;
	char	   *subject;
	char	   *token_id;
	char	   *claims;
	bool		has_expires_at;
	TimestampTz expires_at;
	List	   *allowed_roles;	/* of char * */
	char		kid[PG_OAUTH_KID_LEN];
	char		alg[PG_OAUTH_ALG_LEN];
	int			key_cache_hit;	/* 1 hit, 0 miss, -1 unknown */
	int			max_sessions;	/* -1: no limit */
	int64		validation_us;	/* -1 when no worker answered */
	int64		queue_us;		/* waiting for a worker, -1 unknown */
	bool		from_cache;		/* answered by the decision cache, no worker */
} TokenDecision;

typedef struct TokenRequest
{
	const char *token;
	int			token_len;
	const char *role;
	const char *database;
	const char *client_addr;	/* NULL for a Unix socket */
	bool		ssl;
} TokenRequest;

extern void token_queue_validate(const TokenRequest *req, TokenDecision *out);

/* worker side of the queue */
extern TokenSlot *token_queue_claim(int worker, uint64 *ticket);
extern void token_queue_complete(TokenSlot *slot, uint64 ticket);
extern void token_queue_fail(TokenSlot *slot, const char *reason, const char *detail);
extern void token_queue_set_worker_state(int worker, WorkerState state, const char *error);
extern void token_queue_worker_exit(int worker);
extern bool token_queue_start_refresh(int worker);
extern void token_queue_end_refresh(int worker);

/* session_registry.c */
extern Size session_registry_shmem_size(void);
extern void session_registry_shmem_startup(void);
extern int	session_registry_enter(const TokenDecision *decision, const char *role,
								   const char *database, const char *client_addr);
extern int	session_registry_end_expired(int mode, int grace_s);
extern void session_registry_leave(void);
extern void session_registry_end_pending(bool commit);
extern int	session_registry_end_covered(const char *issuer, const char *subject,
										 const char *token_id, bool has_issued_before,
										 TimestampTz issued_before);

/* standby_follow.c */
extern void standby_follow_step(void *arg);
extern void standby_follow_promoted(void);
extern void session_registry_install_hooks(void);

/* sha256.c */
extern void pg_oauth_sha256(const void *data, size_t len, uint8 out[PG_OAUTH_TOKEN_HASH_LEN]);

/*
 * identity_store.c: identities of any length in shared memory, compared by
 * the SHA-256 of each part, their text kept in a DSA area.
 */
#define IDENTITY_ISSUER		0x01
#define IDENTITY_SUBJECT	0x02
#define IDENTITY_TOKEN_ID	0x04

typedef struct IdentityHash
{
	uint8		present;		/* IDENTITY_* bits of the parts that exist */
	uint8		issuer[PG_OAUTH_TOKEN_HASH_LEN];
	uint8		subject[PG_OAUTH_TOKEN_HASH_LEN];
	uint8		token_id[PG_OAUTH_TOKEN_HASH_LEN];
} IdentityHash;

extern Size identity_store_shmem_size(void);
extern void identity_store_shmem_startup(void);
extern void identity_hash(const char *issuer, const char *subject, const char *token_id,
						  IdentityHash *out);
extern bool identity_matches(const IdentityHash *have, const IdentityHash *want);
extern dsa_pointer identity_text_store(const char *issuer, const char *subject,
									   const char *token_id);
extern void identity_text_fetch(dsa_pointer dp, char **issuer, char **subject,
								char **token_id);
extern void identity_text_take(dsa_pointer dp, char **issuer, char **subject,
							   char **token_id);
extern void identity_text_free(dsa_pointer dp);
extern uint64 identity_store_not_kept(char *why, size_t whylen);

/* decision_cache.c */
extern Size decision_cache_shmem_size(void);
extern void decision_cache_shmem_startup(void);
extern bool decision_cache_hash(const char *token, int len, uint8 *hash);
extern bool decision_cache_usable(void);
extern bool decision_cache_lookup(const TokenRequest *req, const uint8 *hash, TokenDecision *out);
extern void decision_cache_store(const TokenRequest *req, const uint8 *hash,
								 const TokenDecision *d, uint64 version, uint64 epoch);
extern void decision_cache_versions(uint64 *version, uint64 *epoch);
extern void decision_cache_keys_changed(void);

/* login_stats.c */
extern Size login_stats_shmem_size(void);
extern void login_stats_shmem_startup(void);
extern void login_stats_record(const char *issuer, const char *reason, bool ok,
							   bool from_cache, int key_cache_hit,
							   int64 validation_us, int64 queue_us, int64 login_us);

/* rate_limit.c */
extern Size rate_limit_shmem_size(void);
extern void rate_limit_shmem_startup(void);
/* client_addr NULL: a Unix-socket client */
extern int	rate_limit_record_failure(const char *client_addr);
extern bool rate_limit_one_at_a_time(const char *client_addr);
extern char *rate_limit_hint(const char *client_addr, int delay_ms);
extern bool rate_limit_client_left(void);
extern void rate_limit_sleep(int ms);

/* audit_log.c */
#define PG_OAUTH_ESCAPED_NAME_LEN	(4 * NAMEDATALEN)
extern void pg_oauth_escape_text(const char *in, char *out, size_t outlen);
extern size_t pg_oauth_strlcpy_text(char *dst, const char *src, size_t size);

typedef struct AuditRecord
{
	TimestampTz at;
	bool		ok;
	bool		ssl;
	bool		cached;			/* admitted by the decision cache */
	bool		per_transaction;	/* oauth.authenticate(), not a login */
	int			pid;
	int64		elapsed_us;
	int64		queue_us;
	char		reason[PG_OAUTH_REASON_LEN];
	/* names as sent, escaped to valid UTF-8 (up to 4 bytes per byte sent) */
	char		role[PG_OAUTH_ESCAPED_NAME_LEN];
	char		database[PG_OAUTH_ESCAPED_NAME_LEN];
	char		client_addr[64];
	char		kid[PG_OAUTH_KID_LEN];
	char		alg[PG_OAUTH_ALG_LEN];
	/* from the validator, whole; NULL when unknown (process memory only) */
	const char *issuer;
	const char *subject;
	const char *token_id;
} AuditRecord;

extern Size audit_log_shmem_size(void);
extern void audit_log_shmem_startup(void);
extern void audit_log_record(const AuditRecord *rec);
extern int	audit_log_take(AuditRecord *out, int max);
extern uint64 audit_log_pending(void);
extern uint64 audit_log_dropped(void);

/* login_stats.c: the arguments of login_stats_record, kept for later */
typedef struct LoginStatsArgs
{
	const char *issuer;			/* NULL: none known (process memory) */
	bool		from_cache;
	int			key_cache_hit;
	int64		validation_us;
	int64		queue_us;
} LoginStatsArgs;

/* admission.c */
extern void admission_expect(Oid roleid, const AuditRecord *rec, const LoginStatsArgs *stats);
extern bool admission_refuse(const char *reason, const char **role);

/* role_policy.c: privileges a token login refuses unless pg_oauth.allow_privileges names them */
#define ROLE_PRIV_SUPERUSER					0x01
#define ROLE_PRIV_CREATEROLE				0x02	/* before PostgreSQL 16 only */
#define ROLE_PRIV_REPLICATION				0x04
#define ROLE_PRIV_BYPASSRLS					0x08
#define ROLE_PRIV_EXECUTE_SERVER_PROGRAM	0x10
#define ROLE_PRIV_READ_SERVER_FILES			0x20
#define ROLE_PRIV_WRITE_SERVER_FILES		0x40
#define ROLE_PRIV_WRITE_ALL_DATA			0x80	/* could rewrite pg_oauth's own tables */
#define ROLE_PRIV_COUNT						8

typedef struct RolePrivilege
{
	int			bit;
	Oid			via;			/* the role that carries it */
	char		via_name[NAMEDATALEN];
} RolePrivilege;

extern bool check_allow_privileges(char **newval, void **extra, GucSource source);
extern void assign_allow_privileges(const char *newval, void *extra);
extern bool role_privilege_allowed(int bit);
extern const char *role_privilege_name(int bit);
extern int	role_reachable_privileges(Oid roleid, RolePrivilege *found, int max_found,
									  int *nfound);
extern void role_policy_prefetch(const char *rolename);

/* housekeeper.c */
extern void pg_oauth_register_housekeeper(void);
PGDLLEXPORT void pg_oauth_housekeeper_main(Datum main_arg);

/* key_refresh.c: oauth.refresh_keys() makes every worker drop and refetch keys */
#define PG_OAUTH_KEY_REFRESH_TRANCHE	"pg_oauth key refresh"
extern Size key_refresh_shmem_size(void);
extern void key_refresh_shmem_startup(void);
extern uint64 key_refresh_generation(void);
extern List *key_refresh_issuers(uint64 seen, uint64 *upto, bool *all);

/* spi_transaction.c */
extern ErrorData *spi_run_in_transaction(void (*step) (void *), void *arg,
										 MemoryContext error_context);

/* worker_settings.c */
extern void pg_oauth_pin_worker_settings(bool report_overrides);
extern bool pg_oauth_extension_present(void);

/* validator_worker.c */
extern void pg_oauth_register_workers(void);
extern void pg_oauth_wake_all_workers(void);
PGDLLEXPORT void pg_oauth_worker_main(Datum main_arg);
/*
 * Why a worker is not ready before CREATE EXTENSION: the start of its
 * last_error, which refused logins carry in their detail and which
 * auth_hook.c recognizes to give the DBA's next step as the hint.
 */
#define PG_OAUTH_EXTENSION_MISSING	"extension pg_oauth is not installed in database"

/* auth_hook.c */
/* One login attempt, from the hook's start to its decision. */
typedef struct LoginAttempt
{
	Port	   *port;
	TimestampTz started;
	const char *client_addr;	/* NULL: Unix socket */
	bool		token_seen;		/* a token was presented: counts for rate limits */
	Oid			roleid;			/* the role, once looked up */
	char	   *token;			/* wiped by login_refuse() when set */
	int			token_len;
	TokenDecision *decision;	/* NULL until a worker answered */
	const char *role;			/* the role asked for: the startup packet's, or
								 * oauth.authenticate()'s ("": the token's one role) */
	bool		bearer;			/* OAUTHBEARER: a refusal returns to the validator */
	bool		transaction;	/* oauth.authenticate(): a refusal is an ERROR */
	const uint8 *token_hash;	/* the token's SHA-256 when the caller has it, or NULL */
	char	   *expected_issuer;	/* OAUTHBEARER: the oauth line's issuer identifier */
} LoginAttempt;

extern void pg_oauth_install_auth_hook(void);
extern bool token_login_bearer(Port *port, const char *token, char **authn_id,
							   char **client_detail);
PGO_NORETURN_PRE extern void token_transaction_written_into_statement(void) PGO_NORETURN_POST;
extern void token_transaction_decide(const char *role, char *token, int token_len,
									 const uint8 *token_hash, size_t presented,
									 bool in_statement, TokenDecision *decision,
									 Oid *roleid, const char **granted);
PGO_NORETURN_PRE extern void login_refuse(LoginAttempt *a, const char *reason,
										  const char *detail, const char *hint)
			PGO_NORETURN_POST;

/* startup_options.c: refuses "role" and "session_authorization" */
extern void startup_options_check(LoginAttempt *a);

/* password_packet.c: the token of a "trust" line, read as a PasswordMessage */
extern char *password_packet_read(LoginAttempt *a, int *len);

/* oauth_validator.c: pg_oauth as PostgreSQL 18's OAuth validator module */
#if PG_VERSION_NUM >= 180000
extern void oauth_validator_after_method(Port *port, int status);
extern char *bearer_missing_scopes(const char *claims_json, const char *line_scope);
#endif

/* bearer_identity.c: who an OAUTHBEARER login is */
extern char *bearer_identity(void);
#if PG_VERSION_NUM >= 180000
extern char *bearer_line_issuer(Port *port);
#endif

/* hba_fallthrough.c */
extern void hba_fallthrough_explain(Port *port);

/* session_state.c */
typedef struct OAuthSession
{
	bool		active;
	char	   *issuer;
	char	   *subject;
	char	   *token_id;
	char	   *claims;			/* JSON text */
	char	   *role;
	bool		has_expires_at;
	TimestampTz expires_at;
} OAuthSession;

extern OAuthSession pg_oauth_session;
extern void session_state_remember(const TokenDecision *decision, const char *role);
extern void session_state_enter_transaction(const TokenDecision *decision, const char *role);
extern void session_state_leave_transaction(void);
extern Jsonb *session_state_claims(void);
extern uint64 session_state_claims_generation(void);
extern void session_state_adopt(const OAuthSession *s);

/* parallel_identity.c: the session's token identity, carried to parallel workers */
extern void parallel_identity_define_settings(void);
extern void parallel_identity_publish_login(const OAuthSession *s);
extern void parallel_identity_publish_transaction(const OAuthSession *s);
extern void parallel_identity_end_transaction(void);

/* config_signal.c: the configuration version moves when a change commits */
extern void pg_oauth_note_config_change(void);
extern void pg_oauth_note_config_structure_change(void);
extern void pg_oauth_config_moved(void);

/* config_guard.c */
extern void config_guard_install_hooks(void);

/* gateway.c: what a gateway session (pg_oauth.gateway) may run, and when */
extern bool pg_oauth_gateway;
extern void gateway_install_hooks(void);
extern bool gateway_session(void);
extern void gateway_pin_logging(void);

/* transaction_identity.c: oauth.authenticate(), one token per transaction */
extern bool transaction_identity_active(void);
extern bool transaction_identity_calling(void);
extern bool transaction_identity_function(Oid funcid);

#endif							/* PG_OAUTH_EXT_H */
