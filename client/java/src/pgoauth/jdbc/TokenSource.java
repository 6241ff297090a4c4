package pgoauth.jdbc;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The tokens of one profile, kept in the JVM: {@code pg-oauth token --output json} runs only
 * when no token held has enough life left (once per token lifetime, not per connection);
 * connections opening meanwhile wait for that one run. pg-oauth owns the profiles, every
 * flow and the token cache file shared with the machine's other programs.
 */
final class TokenSource {
  private static final Map<String, TokenSource> SOURCES = new ConcurrentHashMap<>();
  private static final long TIMEOUT_SECONDS = 60;
  private static final Pattern ACCESS_TOKEN =
      Pattern.compile("\"access_token\"\\s*:\\s*\"([A-Za-z0-9._~+/=-]+)\"");
  private static final Pattern EXPIRES_AT =
      Pattern.compile("\"expires_at\"\\s*:\\s*(-?[0-9]+(?:\\.[0-9]+)?)");
  private static final Pattern IAT = Pattern.compile("\"iat\"\\s*:\\s*([0-9]+)");

  private final String command;
  private final String profile;
  private final long minValidSeconds;
  private String token;
  private long renewAtMillis;

  private TokenSource(String command, String profile, long minValidSeconds) {
    this.command = command;
    this.profile = profile;
    this.minValidSeconds = minValidSeconds;
  }

  static TokenSource of(String command, String profile, long minValidSeconds) {
    String key = command + '\0' + (profile == null ? "" : profile) + '\0' + minValidSeconds;
    return SOURCES.computeIfAbsent(key, k -> new TokenSource(command, profile, minValidSeconds));
  }

  /** A token valid for minValid more seconds (or half its lifetime when that is shorter). */
  synchronized String token() throws TokenException {
    long now = System.currentTimeMillis();
    if (token != null && now < renewAtMillis) {
      return token;
    }
    String json = run();
    Matcher t = ACCESS_TOKEN.matcher(json);
    if (!t.find()) {
      throw new TokenException("pg-oauth-jdbc: pg-oauth token gave no access token for "
          + described() + "; is it pg_oauth's pg-oauth (pip install ./client)?");
    }
    String fresh = t.group(1);
    Matcher e = EXPIRES_AT.matcher(json);
    now = System.currentTimeMillis();
    if (e.find()) {
      long expiresAt = (long) (Double.parseDouble(e.group(1)) * 1000);
      long issuedAt = issuedAtMillis(fresh, now);
      long lifetime = Math.max(expiresAt - issuedAt, 0);
      renewAtMillis = expiresAt - Math.min(minValidSeconds * 1000, lifetime / 2);
    } else {
      renewAtMillis = now; // no expiry known: ask pg-oauth (and its cache) every time
    }
    token = fresh;
    return fresh;
  }

  /** The JWT's iat (unverified: the server verifies), else now. */
  private static long issuedAtMillis(String jwt, long now) {
    String[] parts = jwt.split("\\.");
    if (parts.length < 2) {
      return now;
    }
    try {
      String claims = new String(Base64.getUrlDecoder().decode(parts[1]), StandardCharsets.UTF_8);
      Matcher m = IAT.matcher(claims);
      if (m.find()) {
        long iat = Long.parseLong(m.group(1)) * 1000;
        return iat <= now ? iat : now;
      }
    } catch (IllegalArgumentException ignored) {
      // not a JWT: its lifetime is unknown
    }
    return now;
  }

  private String run() throws TokenException {
    List<String> argv = new ArrayList<>();
    argv.add(command);
    argv.add("token");
    if (profile != null) {
      argv.add("--profile");
      argv.add(profile);
    }
    argv.add("--output");
    argv.add("json");
    argv.add("--min-valid");
    argv.add(Long.toString(minValidSeconds));
    argv.add("--no-interactive");
    Process process;
    try {
      process = new ProcessBuilder(argv).start();
    } catch (IOException e) {
      throw new TokenException("pg-oauth-jdbc: cannot run " + command + " (" + e.getMessage()
          + "); install the pg_oauth client (pip install ./client) or set -D"
          + ProfileTokenPlugin.COMMAND_PROPERTY + "=/path/to/pg-oauth", e);
    }
    try {
      process.getOutputStream().close();
      StreamReader out = new StreamReader(process.getInputStream());
      StreamReader err = new StreamReader(process.getErrorStream());
      out.start();
      err.start();
      if (!process.waitFor(TIMEOUT_SECONDS, TimeUnit.SECONDS)) {
        process.destroyForcibly();
        throw new TokenException("pg-oauth-jdbc: pg-oauth token for " + described()
            + " took longer than " + TIMEOUT_SECONDS + " s");
      }
      out.join();
      err.join();
      if (process.exitValue() != 0) {
        // pg-oauth's own lines say what went wrong and what to do
        StringBuilder said = new StringBuilder();
        for (String line : err.text().split("\n")) {
          if (line.startsWith("pg-oauth")) {
            said.append(said.length() > 0 ? "\n" : "").append(line);
          }
        }
        throw new TokenException(said.length() > 0 ? said.toString()
            : "pg-oauth-jdbc: " + command + " exited with status " + process.exitValue());
      }
      return out.text();
    } catch (IOException e) {
      throw new TokenException("pg-oauth-jdbc: cannot talk to pg-oauth: " + e.getMessage(), e);
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
      throw new TokenException("pg-oauth-jdbc: interrupted while waiting for pg-oauth", e);
    }
  }

  private String described() {
    return profile == null ? "the default profile" : "profile '" + profile + "'";
  }

  /** One of pg-oauth's outputs, each read on its own so that neither pipe fills up. */
  private static final class StreamReader extends Thread {
    private final InputStream in;
    private volatile String text = "";

    StreamReader(InputStream in) {
      this.in = in;
      setDaemon(true);
    }

    @Override
    public void run() {
      try {
        text = new String(in.readAllBytes(), StandardCharsets.UTF_8);
      } catch (IOException ignored) {
        // the exit status still tells
      }
    }

    String text() {
      return text;
    }
  }
}
