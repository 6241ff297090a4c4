/*-------------------------------------------------------------------------
 *
 * pg_oauth.c
 *	  Module entry point: settings, shared memory, hooks, workers, and the
 *	  guard that refuses trust-line sessions when the library was not
 *	  preloaded.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "fmgr.h"
#include "libpq/hba.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

/* Where `make install` puts pyhook and its dependencies (set by the Makefile). */
#ifndef PG_OAUTH_DEFAULT_PYTHON_PATH
#define PG_OAUTH_DEFAULT_PYTHON_PATH ""
#endif

char	   *pg_oauth_database = NULL;
int			pg_oauth_workers = 2;
char	   *pg_oauth_python_path = NULL;
bool		pg_oauth_require_ssl = true;
int			pg_oauth_timeout_ms = 5000;
int			pg_oauth_max_token_bytes = 16384;
bool		pg_oauth_allow_superuser = false;
int			pg_oauth_client_detail = CLIENT_DETAIL_REASON;
int			pg_oauth_session_expiry = SESSION_EXPIRY_OFF;
int			pg_oauth_session_expiry_grace = 0;
bool		pg_oauth_audit_log = true;
int			pg_oauth_audit_retention = 30 * 24 * 60;
int			pg_oauth_rate_limit_failures = 10;
int			pg_oauth_rate_limit_window = 60;
int			pg_oauth_rate_limit_max_delay = 1000;
bool		pg_oauth_decision_cache = true;
int			pg_oauth_identity_memory = 64 * 1024;	/* kB */

bool		pg_oauth_loaded_at_startup = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry client_detail_options[] = {
	{"none", CLIENT_DETAIL_NONE, false},
	{"reason", CLIENT_DETAIL_REASON, false},
	{"full", CLIENT_DETAIL_FULL, false},
	{NULL, 0, false}
};

static const struct config_enum_entry session_expiry_options[] = {
	{"off", SESSION_EXPIRY_OFF, false},
	{"idle", SESSION_EXPIRY_IDLE, false},
	{"always", SESSION_EXPIRY_ALWAYS, false},
	{NULL, 0, false}
};

void		_PG_init(void);

static void
pg_oauth_shmem_request(void)
{
	Size		size;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	size = token_queue_shmem_size();
	size = add_size(size, session_registry_shmem_size());
	size = add_size(size, login_stats_shmem_size());
	size = add_size(size, rate_limit_shmem_size());
	size = add_size(size, audit_log_shmem_size());
	size = add_size(size, decision_cache_shmem_size());
	size = add_size(size, identity_store_shmem_size());
	size = add_size(size, key_refresh_shmem_size());
	RequestAddinShmemSpace(size);
	RequestNamedLWLockTranche("pg_oauth", PG_OAUTH_NUM_LOCKS);
	RequestNamedLWLockTranche(PG_OAUTH_KEY_REFRESH_TRANCHE, 1);
}

static void
pg_oauth_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	token_queue_shmem_startup();
	session_registry_shmem_startup();
	login_stats_shmem_startup();
	rate_limit_shmem_startup();
	audit_log_shmem_startup();
	decision_cache_shmem_startup();
	identity_store_shmem_startup();
	key_refresh_shmem_startup();
	LWLockRelease(AddinShmemInitLock);
}

static void
define_settings(void)
{
	DefineCustomStringVariable("pg_oauth.database",
							   "Database the validator workers connect to (where CREATE EXTENSION pg_oauth was run).",
							   NULL,
							   &pg_oauth_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.workers",
							"Number of validator background workers.",
							NULL,
							&pg_oauth_workers,
							2, 0, PG_OAUTH_MAX_WORKERS,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("pg_oauth.python_path",
							   "Directory the validator puts first on sys.path before importing pyhook.",
							   NULL,
							   &pg_oauth_python_path,
							   PG_OAUTH_DEFAULT_PYTHON_PATH,
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_oauth.require_ssl",
							 "Refuse token logins over unencrypted TCP before the token is requested.",
							 NULL,
							 &pg_oauth_require_ssl,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.timeout",
							"How long a login waits for a validation decision.",
							NULL,
							&pg_oauth_timeout_ms,
							5000, 100, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.max_token_bytes",
							"Largest token accepted, in bytes.",
							NULL,
							&pg_oauth_max_token_bytes,
							16384, 256, PG_OAUTH_TOKEN_CEILING,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("pg_oauth.allow_privileges",
							   "Privileges a token login role may reach (itself or through membership): superuser, createrole, replication, bypassrls, pg_execute_server_program, pg_read_server_files, pg_write_server_files, pg_write_all_data.",
							   "Empty (the default) refuses token logins of every role that can reach any of them.",
							   &pg_oauth_allow_privileges_string,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   check_allow_privileges, assign_allow_privileges, NULL);

	DefineCustomBoolVariable("pg_oauth.allow_superuser",
							 "Allow token logins as a superuser role (the same as superuser in pg_oauth.allow_privileges).",
							 NULL,
							 &pg_oauth_allow_superuser,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomEnumVariable("pg_oauth.client_detail",
							 "How much of a refusal's reason the client is told (the server log always has all of it).",
							 NULL,
							 &pg_oauth_client_detail,
							 CLIENT_DETAIL_REASON,
							 client_detail_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomEnumVariable("pg_oauth.session_expiry",
							 "Whether token sessions end when their token expires: off, idle (when waiting for a command) or always.",
							 NULL,
							 &pg_oauth_session_expiry,
							 SESSION_EXPIRY_OFF,
							 session_expiry_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.session_expiry_grace",
							"How long after its token's expiry a token session may go on.",
							NULL,
							&pg_oauth_session_expiry_grace,
							0, 0, 7 * 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_oauth.audit_log",
							 "Also keep login attempts in the table oauth.audit_log (the server log always gets a line).",
							 NULL,
							 &pg_oauth_audit_log,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.audit_retention",
							"How long rows stay in oauth.audit_log; 0 keeps them.",
							NULL,
							&pg_oauth_audit_retention,
							30 * 24 * 60, 0, INT_MAX / 2,
							PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.rate_limit_failures",
							"Refused token logins from one client address within the window after which its tokens are checked one at a time, after other addresses'; 0 turns the brute-force brake off.",
							NULL,
							&pg_oauth_rate_limit_failures,
							10, 0, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.rate_limit_window",
							"How long refusals per client address are counted, from the first; then the count starts over.",
							NULL,
							&pg_oauth_rate_limit_window,
							60, 1, 24 * 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.rate_limit_max_delay",
							"Longest delay added to a refusal of a client address that keeps failing.",
							NULL,
							&pg_oauth_rate_limit_max_delay,
							1000, 0, 10000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_oauth.decision_cache",
							 "Admit a token presented again (same role, database, client) from a cache of recent decisions, without a worker.",
							 NULL,
							 &pg_oauth_decision_cache,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_oauth.identity_memory",
							"Shared memory for the text of token identities (issuer, subject, token id) shown by oauth.sessions and oauth.stats and on their way to oauth.audit_log.",
							"Identities are matched by hash whatever their length; when this is full their text shows as NULL.",
							&pg_oauth_identity_memory,
							64 * 1024, 256, 1024 * 1024,
							PGC_POSTMASTER, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_oauth.gateway",
							 "This session is a connection pooler's: its transactions run only as the role of a token given to oauth.authenticate().",
							 "Set by a superuser for the pooler's role (ALTER ROLE ... SET pg_oauth.gateway = on); once a session is a gateway it stays one.",
							 &pg_oauth_gateway,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	parallel_identity_define_settings();

	MarkGUCPrefixReserved("pg_oauth");
}

/*
 * Loaded after authentication (session_preload_libraries, LOAD, or a call to
 * one of our functions) in a server that did not preload us: the hook never
 * ran, so a session that came in through a trust line was admitted without a
 * token.  End it before it runs a single query.
 */
static void
late_load_guard(void)
{
	if (!IsUnderPostmaster || MyProcPort == NULL || MyProcPort->hba == NULL)
		return;
	if (MyProcPort->hba->auth_method != uaTrust)
		return;

	ereport(FATAL,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("JWT authentication failed for user \"%s\"",
					MyProcPort->user_name ? MyProcPort->user_name : ""),
			 errdetail("reason=validator_unavailable: pg_oauth is not in shared_preload_libraries, so this trust-line login was not checked"),
			 errhint("Add pg_oauth to shared_preload_libraries and restart the server.")));
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
	{
		/* PGC_POSTMASTER settings cannot be defined this late; nothing works. */
		late_load_guard();
		return;
	}

	pg_oauth_loaded_at_startup = true;
	define_settings();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pg_oauth_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pg_oauth_shmem_startup;

	pg_oauth_install_auth_hook();
	session_registry_install_hooks();
	config_guard_install_hooks();
	gateway_install_hooks();
	pg_oauth_register_workers();
	pg_oauth_register_housekeeper();
}
