/*-------------------------------------------------------------------------
 *
 * trace.c
 *	  Login phase timings of a `make TRACE=1` build (-DPG_OAUTH_TRACE): the
 *	  times the backend and its worker noted, printed as one "pg_oauth
 *	  trace:" line per successful token login.
 *
 * Kept apart from the hook so that the login path reads the same with and
 * without tracing; bench/trace_profile.py reads the lines.  Not for
 * production builds: it adds a log line per login.  Without TRACE=1 this
 * file compiles to nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#ifdef PG_OAUTH_TRACE
TimestampTz pg_oauth_trace_backend[7];
TimestampTz pg_oauth_trace_worker[6];

/*
 * One line of microseconds per phase of this (successful) login.  The audit
 * record and the counters are written later, by admission.c: "admission" is
 * only the hand-over of their arguments.
 */
void
trace_log_login(bool from_cache)
{
	TimestampTz *b = pg_oauth_trace_backend;
	TimestampTz *w = pg_oauth_trace_worker;

	if (from_cache)
		elog(LOG, "pg_oauth trace: path=cache read=%ld hash=%ld checks=%ld admission=%ld",
			 (long) (b[TRACE_B_TOKEN] - b[TRACE_B_START]),
			 (long) (b[TRACE_B_HASHED] - b[TRACE_B_TOKEN]),
			 (long) (b[TRACE_B_CHECKED] - b[TRACE_B_HASHED]),
			 (long) (b[TRACE_B_ADMISSION] - b[TRACE_B_CHECKED]));
	else
		elog(LOG, "pg_oauth trace: path=worker read=%ld hash=%ld submit=%ld "
			 "worker_wakeup=%ld worker_prepare=%ld txn_start=%ld call=%ld commit=%ld "
			 "hand_back=%ld backend_wakeup=%ld checks=%ld admission=%ld",
			 (long) (b[TRACE_B_TOKEN] - b[TRACE_B_START]),
			 (long) (b[TRACE_B_HASHED] - b[TRACE_B_TOKEN]),
			 (long) (b[TRACE_B_SUBMITTED] - b[TRACE_B_HASHED]),
			 (long) (w[TRACE_W_CLAIMED] - b[TRACE_B_SUBMITTED]),
			 (long) (w[TRACE_W_TXN] - w[TRACE_W_CLAIMED]),
			 (long) (w[TRACE_W_CALL] - w[TRACE_W_TXN]),
			 (long) (w[TRACE_W_RESULT] - w[TRACE_W_CALL]),
			 (long) (w[TRACE_W_COMMITTED] - w[TRACE_W_RESULT]),
			 (long) (w[TRACE_W_HANDED] - w[TRACE_W_COMMITTED]),
			 (long) (b[TRACE_B_ANSWERED] - w[TRACE_W_HANDED]),
			 (long) (b[TRACE_B_CHECKED] - b[TRACE_B_ANSWERED]),
			 (long) (b[TRACE_B_ADMISSION] - b[TRACE_B_CHECKED]));
}
#endif
