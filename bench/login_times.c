/*
 * login_times: one libpq client for every method of the bearer section (bench/bearer.py),
 * so that the client's own cost is the same for all of them and no Python runs while a
 * login is timed.
 *
 * usage: login_times CONNINFO...
 * stdin: one login a line, "INDEX MODE [SECRET]": INDEX picks a CONNINFO (0-based), MODE
 * is n (no secret), p (SECRET as the password) or b (SECRET as the bearer token, handed
 * over through PQAUTHDATA_OAUTH_BEARER_TOKEN).
 * stdout: for each line, the microseconds from PQconnectdbParams to CONNECTION_OK (the
 * connection is closed after the clock stops). The first failure: its message on stderr
 * and exit status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "libpq-fe.h"

static char *bearer_token;

static int
bearer_hook(PGauthData type, PGconn *conn, void *data)
{
	PGoauthBearerRequest *request = data;

	if (type != PQAUTHDATA_OAUTH_BEARER_TOKEN)
		return PQdefaultAuthDataHook(type, conn, data);
	request->token = bearer_token;
	return 1;
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int
main(int argc, char **argv)
{
	static char line[65536];

	PQsetAuthDataHook(bearer_hook);
	while (fgets(line, sizeof(line), stdin))
	{
		const char *keywords[] = {"dbname", "password", NULL};
		const char *values[] = {NULL, NULL, NULL};
		char	   *index_text = strtok(line, " \n");
		char	   *mode = strtok(NULL, " \n");
		char	   *secret = strtok(NULL, " \n");
		int			index;
		double		started,
					elapsed;
		PGconn	   *conn;

		if (index_text == NULL || mode == NULL)
			continue;
		index = atoi(index_text);
		if (index < 0 || index >= argc - 1 || (*mode != 'n' && secret == NULL))
		{
			fprintf(stderr, "bad line: %s %s\n", index_text, mode);
			return 2;
		}
		values[0] = argv[index + 1];
		values[1] = *mode == 'p' ? secret : NULL;
		bearer_token = *mode == 'b' ? secret : NULL;

		started = now_us();
		conn = PQconnectdbParams(keywords, values, 1);
		elapsed = now_us() - started;
		if (PQstatus(conn) != CONNECTION_OK)
		{
			fprintf(stderr, "login %d %s failed: %s", index, mode, PQerrorMessage(conn));
			PQfinish(conn);
			return 1;
		}
		PQfinish(conn);
		printf("%.1f\n", elapsed);
	}
	fflush(stdout);
	return 0;
}
