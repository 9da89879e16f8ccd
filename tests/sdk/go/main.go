// Command sdk-client-go is the Go conformance client: it resolves credentials through
// aws-sdk-go-v2's default chain (config.LoadDefaultConfig), exactly as an application in a
// pod would, then calls STS GetCallerIdentity CREDVEND_SDK_CALLS times and prints one JSON
// line that the Rust driver (tests/sdk_conformance.rs) parses.
//
// Nothing here configures credentials: the chain must find the container endpoint from
// AWS_CONTAINER_CREDENTIALS_FULL_URI and friends, and STS from AWS_ENDPOINT_URL_STS.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// report is the line every client prints; the field names are shared by all five clients.
type report struct {
	SDK          string   `json:"sdk"`
	Version      string   `json:"version"`
	OK           bool     `json:"ok"`
	Arn          string   `json:"arn,omitempty"`
	AccessKeyID  string   `json:"access_key_id,omitempty"`
	AccessKeyIDs []string `json:"access_key_ids"`
	AccountID    *string  `json:"account_id,omitempty"`
	Calls        int      `json:"calls"`
	Succeeded    int      `json:"succeeded"`
	Errors       []string `json:"errors"`
	Error        string   `json:"error,omitempty"`
}

func envInt(name string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return fallback
}

// sdkVersion reads the linked module version, so the matrix names what actually ran.
func sdkVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/aws/aws-sdk-go-v2/config" {
				return dep.Version
			}
		}
	}
	return "unknown"
}

func main() {
	calls := envInt("CREDVEND_SDK_CALLS", 1)
	pause := time.Duration(envInt("CREDVEND_SDK_SLEEP_MS", 0)) * time.Millisecond
	out := report{SDK: "go", Version: sdkVersion(), Calls: calls, AccessKeyIDs: []string{}, Errors: []string{}}
	ctx := context.Background()

	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		out.Error = err.Error()
		emit(out)
		return
	}
	var signedWith string
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.APIOptions = append(o.APIOptions, recordSigningKey(&signedWith))
	})
	for i := 0; i < calls; i++ {
		if i > 0 && pause > 0 {
			time.Sleep(pause)
		}
		id, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			out.Errors = append(out.Errors, err.Error())
			continue
		}
		out.Succeeded++
		out.Arn = *id.Arn
		out.AccessKeyID = signedWith
		if n := len(out.AccessKeyIDs); n == 0 || out.AccessKeyIDs[n-1] != signedWith {
			out.AccessKeyIDs = append(out.AccessKeyIDs, signedWith)
		}
	}
	if os.Getenv("CREDVEND_SDK_REPORT_ACCOUNT") == "1" && out.Succeeded > 0 {
		// From the config's credentials cache: no new fetch while they are fresh.
		if creds, err := cfg.Credentials.Retrieve(ctx); err == nil {
			out.AccountID = &creds.AccountID
		}
	}
	out.OK = out.Succeeded == calls
	if !out.OK && out.Error == "" && len(out.Errors) > 0 {
		out.Error = out.Errors[0]
	}
	emit(out)
}

var credentialScope = regexp.MustCompile(`Credential=([^/,\s]+)/`)

// recordSigningKey notes the access key id of each signed request, read from its SigV4
// Authorization header. Asking the credentials cache instead would itself trigger a fetch
// whenever the SDK is inside its refresh window, and so distort the fetch counts.
func recordSigningKey(key *string) func(*middleware.Stack) error {
	return func(stack *middleware.Stack) error {
		record := middleware.DeserializeMiddlewareFunc("credvendRecordSigningKey",
			func(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
				middleware.DeserializeOutput, middleware.Metadata, error,
			) {
				if req, ok := in.Request.(*smithyhttp.Request); ok {
					if m := credentialScope.FindStringSubmatch(req.Header.Get("Authorization")); m != nil {
						*key = m[1]
					}
				}
				return next.HandleDeserialize(ctx, in)
			})
		// Last in the deserialize step = closest to the wire, after signing.
		return stack.Deserialize.Add(record, middleware.After)
	}
}

// emit prints the report; a non-zero exit tells a shell user the same thing the JSON does.
func emit(out report) {
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
	if !out.OK {
		os.Exit(1)
	}
}
