package io.credvend.sdkclient;

import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.core.interceptor.Context;
import software.amazon.awssdk.core.interceptor.ExecutionAttributes;
import software.amazon.awssdk.core.interceptor.ExecutionInterceptor;
import software.amazon.awssdk.core.util.VersionInfo;
import software.amazon.awssdk.services.sts.StsClient;
import software.amazon.awssdk.services.sts.model.GetCallerIdentityResponse;

/**
 * The Java conformance client: resolves credentials through the AWS SDK for Java v2's
 * DefaultCredentialsProvider, exactly as an application in a pod would, calls STS
 * GetCallerIdentity CREDVEND_SDK_CALLS times and prints one JSON line for the Rust driver
 * (tests/sdk_conformance.rs). Region and the STS endpoint come from AWS_REGION and
 * AWS_ENDPOINT_URL_STS, so nothing here bypasses the SDK's own configuration chain.
 */
public final class SdkClient {
  private static final Pattern CREDENTIAL_SCOPE = Pattern.compile("Credential=([^/,\\s]+)/");

  /** Access key id of the last signed request; read from the wire, not from the provider. */
  private static volatile String signedWith = "";

  public static void main(String[] args) {
    int calls = envInt("CREDVEND_SDK_CALLS", 1);
    long pauseMs = envInt("CREDVEND_SDK_SLEEP_MS", 0);
    List<String> keys = new ArrayList<>();
    List<String> errors = new ArrayList<>();
    String arn = null;
    int succeeded = 0;
    String fatal = null;
    String accountId = null;

    try (DefaultCredentialsProvider credentials = DefaultCredentialsProvider.builder().build();
        StsClient sts =
            StsClient.builder()
                .credentialsProvider(credentials)
                .overrideConfiguration(c -> c.addExecutionInterceptor(new RecordSigningKey()))
                .build()) {
      for (int i = 0; i < calls; i++) {
        if (i > 0 && pauseMs > 0) {
          Thread.sleep(pauseMs);
        }
        try {
          GetCallerIdentityResponse id = sts.getCallerIdentity();
          succeeded++;
          arn = id.arn();
          if (keys.isEmpty() || !keys.get(keys.size() - 1).equals(signedWith)) {
            keys.add(signedWith);
          }
        } catch (RuntimeException e) {
          errors.add(describe(e));
        }
      }
      if ("1".equals(System.getenv("CREDVEND_SDK_REPORT_ACCOUNT")) && succeeded > 0) {
        // The provider's cached credentials: no new fetch while they are fresh.
        accountId = credentials.resolveCredentials().accountId().orElse("");
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      fatal = describe(e);
    } catch (RuntimeException e) {
      fatal = describe(e);
    }

    boolean ok = fatal == null && succeeded == calls;
    if (!ok && fatal == null && !errors.isEmpty()) {
      fatal = errors.get(0);
    }
    StringBuilder out = new StringBuilder("{\"sdk\":\"java\"");
    field(out, "version", VersionInfo.SDK_VERSION);
    out.append(",\"ok\":").append(ok);
    if (arn != null) {
      field(out, "arn", arn);
      field(out, "access_key_id", signedWith);
    }
    out.append(",\"access_key_ids\":").append(array(keys));
    if (accountId != null) {
      field(out, "account_id", accountId);
    }
    out.append(",\"calls\":").append(calls);
    out.append(",\"succeeded\":").append(succeeded);
    out.append(",\"errors\":").append(array(errors));
    if (fatal != null) {
      field(out, "error", fatal);
    }
    System.out.println(out.append('}'));
    System.exit(ok ? 0 : 1);
  }

  /** Notes the key of every request the SDK signs, at the last moment before it is sent. */
  private static final class RecordSigningKey implements ExecutionInterceptor {
    @Override
    public void beforeTransmission(
        Context.BeforeTransmission context, ExecutionAttributes attributes) {
      context
          .httpRequest()
          .firstMatchingHeader("Authorization")
          .ifPresent(
              header -> {
                Matcher m = CREDENTIAL_SCOPE.matcher(header);
                if (m.find()) {
                  signedWith = m.group(1);
                }
              });
    }
  }

  /** The exception chain in one line: the SDK wraps the provider's cause several times. */
  private static String describe(Throwable e) {
    StringBuilder s = new StringBuilder();
    for (Throwable t = e; t != null; t = t.getCause()) {
      if (s.length() > 0) {
        s.append(" <- ");
      }
      s.append(t.getClass().getSimpleName()).append(": ").append(t.getMessage());
    }
    return s.toString();
  }

  private static int envInt(String name, int fallback) {
    try {
      return Integer.parseInt(System.getenv(name));
    } catch (NumberFormatException e) {
      return fallback;
    }
  }

  private static void field(StringBuilder out, String name, String value) {
    out.append(",\"").append(name).append("\":").append(quote(value));
  }

  private static String array(List<String> items) {
    StringBuilder s = new StringBuilder("[");
    for (int i = 0; i < items.size(); i++) {
      s.append(i == 0 ? "" : ",").append(quote(items.get(i)));
    }
    return s.append(']').toString();
  }

  /** Minimal JSON string escaping, enough for messages and identifiers. */
  private static String quote(String value) {
    StringBuilder s = new StringBuilder("\"");
    for (char c : String.valueOf(value).toCharArray()) {
      switch (c) {
        case '"' -> s.append("\\\"");
        case '\\' -> s.append("\\\\");
        case '\n' -> s.append("\\n");
        case '\r' -> s.append("\\r");
        case '\t' -> s.append("\\t");
        default -> {
          if (c < 0x20) {
            s.append(String.format("\\u%04x", (int) c));
          } else {
            s.append(c);
          }
        }
      }
    }
    return s.append('"').toString();
  }
}
