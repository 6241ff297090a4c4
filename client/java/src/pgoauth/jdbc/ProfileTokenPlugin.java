package pgoauth.jdbc;

import java.util.Properties;

import org.postgresql.plugin.AuthenticationPlugin;
import org.postgresql.plugin.AuthenticationRequestType;
import org.postgresql.util.PSQLException;
import org.postgresql.util.PSQLState;

/**
 * A pgjdbc password from a pg-oauth profile: the server's password request gets an access
 * token of the profile, kept in the JVM until it is close to expiry.
 *
 * <pre>
 * jdbc:postgresql://db.example.com/app?user=svc&amp;sslmode=verify-full
 *     &amp;sslrootcert=/etc/ssl/db-ca.crt
 *     &amp;authenticationPluginClassName=pgoauth.jdbc.ProfileTokenPlugin
 *     &amp;pgOAuthProfile=prod
 * </pre>
 *
 * Connection properties: {@code pgOAuthProfile} (default: $PG_OAUTH_PROFILE, else pg-oauth's
 * default), {@code pgOAuthMinValid} (seconds a token handed to a new connection stays valid,
 * default 300, at most half its lifetime). The command is {@code pg-oauth} from PATH, or the
 * system property {@code pgoauth.command} (never a connection property: a URL must not
 * choose what runs).
 */
public final class ProfileTokenPlugin implements AuthenticationPlugin {
  public static final String PROFILE = "pgOAuthProfile";
  public static final String MIN_VALID = "pgOAuthMinValid";
  public static final String COMMAND_PROPERTY = "pgoauth.command";
  static final long DEFAULT_MIN_VALID = 300;

  private final TokenSource source;
  private final String settingsError;

  /** pgjdbc instantiates the plugin for each connection, with its properties. */
  public ProfileTokenPlugin(Properties info) {
    String profile = emptyToNull(info.getProperty(PROFILE));
    String command = System.getProperty(COMMAND_PROPERTY, "pg-oauth");
    long minValid = DEFAULT_MIN_VALID;
    String problem = null;
    String given = emptyToNull(info.getProperty(MIN_VALID));
    if (given != null) {
      try {
        minValid = Long.parseLong(given.trim());
        if (minValid < 0) {
          problem = MIN_VALID + " must be a number of seconds, not " + given;
        }
      } catch (NumberFormatException e) {
        problem = MIN_VALID + " must be a number of seconds, not " + given;
      }
    }
    this.settingsError = problem;
    this.source = TokenSource.of(command, profile, minValid);
  }

  @Override
  public char[] getPassword(AuthenticationRequestType type) throws PSQLException {
    if (settingsError != null) {
      throw new PSQLException("pg-oauth-jdbc: " + settingsError, PSQLState.INVALID_PARAMETER_VALUE);
    }
    try {
      return source.token().toCharArray();
    } catch (TokenException e) {
      throw new PSQLException(e.getMessage(), PSQLState.CONNECTION_REJECTED, e);
    }
  }

  private static String emptyToNull(String s) {
    return s == null || s.isBlank() ? null : s;
  }
}
