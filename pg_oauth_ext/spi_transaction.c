/*-------------------------------------------------------------------------
 *
 * spi_transaction.c
 *	  One SPI step in a transaction of its own, for the background workers:
 *	  an error never escapes (a worker must not die of a bad token or a
 *	  dropped table), it comes back as a copy the caller can report.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/*
 * Run step(arg) inside StartTransactionCommand/Commit with SPI connected and
 * a snapshot pushed.  On error: abort, and return the error copied into
 * error_context (NULL when all went well).  Returns in error_context.
 */
ErrorData *
spi_run_in_transaction(void (*step) (void *), void *arg, MemoryContext error_context)
{
	ErrorData  *volatile edata = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		PushActiveSnapshot(GetTransactionSnapshot());
		step(arg);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		/* leave ErrorContext before copying, as CopyErrorData requires */
		MemoryContextSwitchTo(error_context);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(error_context);
	return edata;
}
