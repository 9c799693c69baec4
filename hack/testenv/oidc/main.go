// Command oidc is the OpenID Provider of the local test cluster: zitadel/oidc's example provider
// (the library is OpenID Certified; its example brings in-memory storage and a login form) served
// over HTTPS, with the issuer, the users and one web client given on the command line. The test
// cluster's kube-apiserver trusts its ID tokens (--oidc-issuer-url), as a real cluster trusts Dex,
// Keycloak or Okta; api.Service signs users in with it (docs/ui.md, "Sign in with OIDC").
package main

import (
	"flag"
	"log"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve HTTPS on")
	issuer := flag.String("issuer", "", "the issuer URL (https://host:port, no trailing slash)")
	cert := flag.String("cert", "", "serving certificate (PEM)")
	key := flag.String("key", "", "serving key (PEM)")
	users := flag.String("users", "", `JSON file of the users: {"<id>": {"ID", "Username", "Password", "Email", ...}}`)
	clientID := flag.String("client-id", "", "the one web client's id")
	clientSecret := flag.String("client-secret", "", "its secret")
	redirects := flag.String("redirect-uris", "", "its redirect URIs, comma-separated")
	flag.Parse()
	if *issuer == "" || *cert == "" || *key == "" || *users == "" || *clientID == "" || *redirects == "" {
		log.Fatal("oidc: -issuer, -cert, -key, -users, -client-id and -redirect-uris are required")
	}
	store, err := storage.StoreFromFile(*users)
	if err != nil {
		log.Fatalf("oidc: users: %v", err)
	}
	clients := map[string]*storage.Client{
		*clientID: storage.WebClient(*clientID, *clientSecret, strings.Split(*redirects, ",")...),
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	router := exampleop.SetupServer(*issuer, storage.NewStorageWithClients(store, clients), logger, false)
	server := &http.Server{Addr: *listen, Handler: router}
	log.Printf("oidc: issuer %s on https://%s", *issuer, *listen)
	log.Fatal(server.ListenAndServeTLS(*cert, *key))
}
