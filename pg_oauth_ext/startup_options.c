/*-------------------------------------------------------------------------
 *
 * startup_options.c
 *	  The startup options a token login refuses: "role" and
 *	  "session_authorization", sent as startup parameters or as switches
 *	  inside the "options" parameter.
 *
 * PostgreSQL applies them after authentication with only a membership
 * check, so a token for one role could otherwise become a session acting as
 * another.  The "options" parameter is read here the way the backend's
 * getopt reads it (process_postgres_switches() is not callable before the
 * session starts), erring towards finding more, never less.
 *
 *-------------------------------------------------------------------------
 */
#include "pg_oauth.h"

#include "miscadmin.h"

/* "role", "Session-Authorization", ... as GUC name lookup would see them. */
static bool
is_forbidden_setting(const char *name, size_t len)
{
	char		norm[NAMEDATALEN];
	size_t		i;

	if (len >= sizeof(norm))
		return false;
	for (i = 0; i < len; i++)
		norm[i] = (name[i] == '-') ? '_' : pg_tolower((unsigned char) name[i]);
	norm[len] = '\0';
	return strcmp(norm, "role") == 0 || strcmp(norm, "session_authorization") == 0;
}

static bool
option_sets_forbidden(const char *opt)
{
	const char *eq = strchr(opt, '=');

	return is_forbidden_setting(opt, eq ? (size_t) (eq - opt) : strlen(opt));
}

/*
 * The switches of process_postgres_switches() that take an argument: its
 * getopt string is "B:bc:C:D:d:EeFf:h:ijk:lN:nOPp:r:S:sTt:v:W:-:".
 */
#define SWITCHES_WITH_ARGUMENT	"BcCDdfhkNprStvW-"

/*
 * The "options" startup parameter, split as PostgreSQL splits it and read
 * the way getopt reads it: flags may be grouped ("-Ecrole=x"), an argument
 * may be glued or the next word ("-c role=x"), "--name=value" is "-c", and
 * glibc's getopt skips over non-options to later ones.  Every word is
 * scanned, so this can only find more than PostgreSQL would apply, never
 * less.
 */
static bool
forbidden_in_switches(const char *cmdline_options)
{
	int			maxac = 2 + (strlen(cmdline_options) + 1) / 2;
	char	  **av = palloc(maxac * sizeof(char *));
	int			ac = 0;
	int			i;

	av[ac++] = "postgres";
	pg_split_opts(av, &ac, cmdline_options);
	for (i = 1; i < ac; i++)
	{
		const char *arg = av[i];
		const char *p;

		if (arg[0] != '-' || strcmp(arg, "-") == 0 || strcmp(arg, "--") == 0)
			continue;
		for (p = arg + 1; *p != '\0'; p++)
		{
			const char *optarg;

			if (strchr(SWITCHES_WITH_ARGUMENT, *p) == NULL)
				continue;		/* a flag without argument: the group goes on */
			optarg = (p[1] != '\0') ? p + 1 : (i + 1 < ac ? av[++i] : NULL);
			if ((*p == 'c' || *p == '-') && optarg != NULL && option_sets_forbidden(optarg))
				return true;
			break;				/* the argument ends the group */
		}
	}
	return false;
}

/*
 * Startup options "role" and "session_authorization" are applied after
 * authentication with only a membership check: a token for alice must not
 * become a session acting as another role.  Refused here, before the token
 * is asked for; admission.c checks the effect once every option and
 * setting is applied.
 */
void
startup_options_check(LoginAttempt *a)
{
	Port	   *port = a->port;
	ListCell   *lc;

	/* name/value pairs sent as startup packet parameters */
	for (lc = list_head(port->guc_options); lc != NULL; lc = lnext(port->guc_options, lc))
	{
		const char *name = lfirst(lc);

		lc = lnext(port->guc_options, lc);
		if (is_forbidden_setting(name, strlen(name)))
			login_refuse(a, "startup_option_forbidden",
				   psprintf("startup parameter \"%s\" is not allowed on token logins", name),
				   "Connect as the role you need; SET ROLE after login is subject to normal privileges.");
		if (lc == NULL)
			break;
	}

	/* switches inside the "options" parameter */
	if (port->cmdline_options != NULL && forbidden_in_switches(port->cmdline_options))
		login_refuse(a, "startup_option_forbidden",
			   "startup options may not set role or session_authorization on token logins",
			   "Connect as the role you need; SET ROLE after login is subject to normal privileges.");
}
