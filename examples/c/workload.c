/*
 * workload.c: a tpmauthn workload in C, on libnats (Debian libnats-dev).
 * It asks the agent who it is (GET /v1/whoami on the agent's socket), then
 * connects to NATS with that nkey and a signature handler that has the
 * agent sign the server's nonce with the workload's TPM credential
 * (POST /v1/nats/sign), publishes on SUBJECT and reads it back.
 *
 *   cc -o workload workload.c -lnats
 *   ./workload /run/tpmauthn/agent.sock nats://127.0.0.1:4222 demo.greetings
 *
 * The agent's answers are small JSON objects; the two fields read here are
 * found by name (a real program would use a JSON library).
 */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *agentSocket;

/* agent does one HTTP/1.0 request on the agent's Unix socket and returns
 * the response body (malloc'd), or NULL. */
static char *agent(const char *method, const char *path, const char *body) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, agentSocket, sizeof(a.sun_path) - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        perror("agent socket");
        return NULL;
    }
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.0\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, body ? strlen(body) : 0, body ? body : "");
    if (write(fd, req, n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 8192, len = 0;
    char *resp = malloc(cap);
    ssize_t r;
    while (resp && (r = read(fd, resp + len, cap - len - 1)) > 0) {
        len += r;
        if (len + 1 == cap)
            resp = realloc(resp, cap *= 2);
    }
    close(fd);
    if (!resp)
        return NULL;
    resp[len] = 0;
    if (strncmp(resp, "HTTP/1.1 200", 12) != 0 && strncmp(resp, "HTTP/1.0 200", 12) != 0) {
        fprintf(stderr, "agent: %s\n", resp);
        free(resp);
        return NULL;
    }
    char *b = strstr(resp, "\r\n\r\n");
    char *out = b ? strdup(b + 4) : NULL;
    free(resp);
    return out;
}

/* field returns the string value of "name" in a flat JSON object. */
static char *field(const char *json, const char *name) {
    char key[64];
    snprintf(key, sizeof(key), "\"%s\":\"", name);
    const char *p = json ? strstr(json, key) : NULL;
    if (!p)
        return NULL;
    p += strlen(key);
    const char *e = strchr(p, '"');
    return e ? strndup(p, e - p) : NULL;
}

/* unb64url decodes base64url without padding into out; its length. */
static int unb64url(const char *in, unsigned char *out) {
    int v = 0, bits = 0, n = 0;
    for (; *in; in++) {
        const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const char *c = strchr(abc, *in);
        if (!c)
            return -1;
        v = (v << 6) | (int)(c - abc);
        if ((bits += 6) >= 8)
            out[n++] = (unsigned char)(v >> (bits -= 8));
    }
    return n;
}

/* sign is libnats's signature handler: the agent signs the nonce. */
static natsStatus sign(char **errTxt, unsigned char **sig, int *sigLen, const char *nonce, void *closure) {
    (void)closure;
    char body[512];
    snprintf(body, sizeof(body), "{\"nonce\":\"%s\"}", nonce);
    char *resp = agent("POST", "/v1/nats/sign", body);
    char *s = field(resp, "sig");
    free(resp);
    if (!s) {
        *errTxt = strdup("the tpmauthn agent did not sign the nonce");
        return NATS_ERR;
    }
    *sig = malloc(strlen(s));
    *sigLen = unb64url(s, *sig);
    free(s);
    return *sigLen > 0 ? NATS_OK : NATS_ERR;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s AGENT_SOCKET NATS_URL SUBJECT\n", argv[0]);
        return 2;
    }
    agentSocket = argv[1];
    char *who = agent("GET", "/v1/whoami", NULL);
    char *nkey = field(who, "nkey"), *inbox = field(who, "inbox"), *name = field(who, "workload");
    if (!nkey || !inbox) {
        fprintf(stderr, "the agent does not know this program: %s\n", who ? who : "(no answer)");
        return 1;
    }
    printf("agent says: workload %s, nkey %s\n", name ? name : "?", nkey);
    natsOptions *opts;
    natsConnection *nc;
    natsSubscription *sub;
    natsMsg *msg;
    natsStatus s = natsOptions_Create(&opts);
    if (s == NATS_OK) s = natsOptions_SetURL(opts, argv[2]);
    if (s == NATS_OK) s = natsOptions_SetNKey(opts, nkey, sign, NULL);
    if (s == NATS_OK) s = natsOptions_SetCustomInboxPrefix(opts, inbox);
    if (s == NATS_OK) s = natsConnection_Connect(&nc, opts);
    if (s != NATS_OK) {
        fprintf(stderr, "connect: %s\n", natsStatus_GetText(s));
        return 1;
    }
    printf("connected to NATS with a TPM-signed nonce\n");
    if (s == NATS_OK) s = natsConnection_SubscribeSync(&sub, nc, argv[3]);
    if (s == NATS_OK) s = natsConnection_PublishString(nc, argv[3], "hello from C");
    if (s == NATS_OK) s = natsSubscription_NextMsg(&msg, sub, 5000);
    if (s != NATS_OK) {
        fprintf(stderr, "publish and receive on %s: %s\n", argv[3], natsStatus_GetText(s));
        return 1;
    }
    printf("published and received on %s: \"%.*s\"\n", argv[3], natsMsg_GetDataLength(msg), natsMsg_GetData(msg));
    natsMsg_Destroy(msg);
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
    natsOptions_Destroy(opts);
    free(who), free(nkey), free(inbox), free(name);
    nats_Close();
    return 0;
}
