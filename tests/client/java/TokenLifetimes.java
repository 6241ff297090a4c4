import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * For tests/client/test_jdbc_plugin.py: four threads open a connection each, query, close,
 * again and again, until the connections have used `lifetimes` different tokens. Prints
 * "tokens N", "connections N", "seen USER ssl=BOOL" lines and "error MESSAGE" for every
 * failure. Usage: java TokenLifetimes.java JDBC_URL LIFETIMES
 */
public final class TokenLifetimes {
  private static final String QUERY = "SELECT (oauth.session()).token_id, current_user,"
      + " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),"
      + " pg_sleep(0.2)";

  public static void main(String[] args) throws Exception {
    String url = args[0];
    int lifetimes = Integer.parseInt(args[1]);
    Set<String> tokens = Collections.synchronizedSet(new HashSet<>());
    AtomicInteger connections = new AtomicInteger();
    Set<String> seen = Collections.synchronizedSet(new HashSet<>());
    List<String> errors = Collections.synchronizedList(new ArrayList<>());
    long giveUp = System.currentTimeMillis() + 120_000; // a guard, not a measure
    ExecutorService threads = Executors.newFixedThreadPool(4);
    while (tokens.size() < lifetimes && System.currentTimeMillis() < giveUp) {
      List<Future<?>> round = new ArrayList<>();
      for (int i = 0; i < 4; i++) {
        round.add(threads.submit(() -> {
          try (Connection c = DriverManager.getConnection(url);
               Statement s = c.createStatement();
               ResultSet r = s.executeQuery(QUERY)) {
            r.next();
            tokens.add(r.getString(1));
            connections.incrementAndGet();
            seen.add(r.getString(2) + " ssl=" + r.getBoolean(3));
          } catch (SQLException e) {
            errors.add(e.getMessage().replace('\n', ' '));
          }
        }));
      }
      for (Future<?> f : round) {
        f.get();
      }
      if (!errors.isEmpty()) {
        break;
      }
    }
    threads.shutdown();
    System.out.println("tokens " + tokens.size());
    System.out.println("connections " + connections.get());
    for (String s : seen) {
      System.out.println("seen " + s);
    }
    for (String e : errors) {
      System.out.println("error " + e);
    }
  }
}
