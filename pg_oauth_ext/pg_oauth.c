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

bool		pg_oauth_loaded_at_startup = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const struct config_enum_entry client_detail_options[] = {
	{"none", CLIENT_DETAIL_NONE, false},
	{"reason", CLIENT_DETAIL_REASON, false},
	{"full", CLIENT_DETAIL_FULL, false},
	{NULL, 0, false}
};

void		_PG_init(void);

static void
pg_oauth_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	token_queue_shmem_request();
}

static void
pg_oauth_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	token_queue_shmem_startup();
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

	DefineCustomBoolVariable("pg_oauth.allow_superuser",
							 "Allow token logins as a superuser role.",
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
	pg_oauth_register_workers();
}
