package pgoauth.jdbc;

/** pg-oauth gave no token; the message is pg-oauth's own one line (never the token). */
public final class TokenException extends Exception {
  private static final long serialVersionUID = 1L;

  TokenException(String message) {
    super(message);
  }

  TokenException(String message, Throwable cause) {
    super(message, cause);
  }
}
