#include "xds/ads.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataplane/log.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "xds/pbwire.h"

#define ADS_SOTW_METHOD "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
#define ADS_DELTA_METHOD "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
/* Envoy answers a rejected config with INTERNAL in error_detail.code. */
#define NACK_CODE 13

typedef struct name_version {
    char *name;
    char *version;
} name_version_t;

typedef struct ads_type {
    char *type_url;
    bool wildcard;
    char **names; /* the subscription wanted */
    size_t n_names;
    char **sent; /* delta: the subscription the server knows */
    size_t n_sent;
    bool sent_wildcard;
    char *version; /* SotW: last accepted version_info */
    char *nonce;   /* last nonce received */
    bool requested; /* a request went out on the current stream */
    name_version_t *held; /* delta: resources held, for initial_resource_versions */
    size_t n_held;
} ads_type_t;

struct xds_ads {
    uv_loop_t *loop;
    xds_ads_config_t cfg;
    char *target;
    char *method;
    char *token_file;
    char *owned[4];
    char **metadata;
    xds_ads_callbacks_t cb;
    void *userdata;
    ads_type_t **types; /* each allocated once: callbacks may add types while one is in use */
    size_t n_types;
    xds_grpc_stream_t *stream;
    bool connected;   /* a response arrived on the current stream */
    bool node_sent;   /* on the current stream */
    bool running;
    unsigned attempt; /* consecutive failures, for back-off */
    uv_timer_t retry;
    Envoy__Config__Core__V3__Node *node_msg;
};

static char *xstrdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (p == NULL)
        abort();
    return p;
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **dup_strv(const char *const *v, size_t n)
{
    char **r = calloc(n ? n : 1, sizeof(*r));
    if (r == NULL)
        abort();
    for (size_t i = 0; i < n; i++)
        r[i] = xstrdup(v[i]);
    return r;
}

static bool strv_has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i], s) == 0)
            return true;
    }
    return false;
}

static ads_type_t *find_type(xds_ads_t *a, const char *type_url)
{
    for (size_t i = 0; i < a->n_types; i++) {
        if (strcmp(a->types[i]->type_url, type_url) == 0)
            return a->types[i];
    }
    return NULL;
}

/* ---- requests ---- */

static void send_msg(xds_ads_t *a, const ProtobufCMessage *m)
{
    if (a->stream == NULL)
        return;
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        abort();
    protobuf_c_message_pack(m, buf);
    xds_grpc_stream_send(a->stream, buf, n);
    free(buf);
}

static Envoy__Config__Core__V3__Node *node_for_request(xds_ads_t *a)
{
    if (a->node_sent && a->cfg.node_first_only)
        return NULL;
    a->node_sent = true;
    return a->node_msg;
}

static void send_sotw(xds_ads_t *a, ads_type_t *t, const char *nonce, const char *error)
{
    Envoy__Service__Discovery__V3__DiscoveryRequest rq;
    Google__Rpc__Status st;
    envoy__service__discovery__v3__discovery_request__init(&rq);
    rq.version_info = t->version ? t->version : "";
    rq.node = node_for_request(a);
    rq.type_url = t->type_url;
    rq.response_nonce = (char *)(nonce ? nonce : "");
    if (!t->wildcard) {
        rq.resource_names = t->names;
        rq.n_resource_names = t->n_names;
    }
    if (error) {
        google__rpc__status__init(&st);
        st.code = NACK_CODE;
        st.message = (char *)error;
        rq.error_detail = &st;
    }
    t->requested = true;
    send_msg(a, &rq.base);
}

/* A delta request: on a new stream, the whole subscription and the versions already held; later
 * the subscription's difference since the last request; or an ACK/NACK when nonce is given
 * (which must not change the subscription). */
static void send_delta(xds_ads_t *a, ads_type_t *t, const char *nonce, const char *error)
{
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest rq;
    Google__Rpc__Status st;
    envoy__service__discovery__v3__delta_discovery_request__init(&rq);
    rq.node = node_for_request(a);
    rq.type_url = t->type_url;
    rq.response_nonce = (char *)(nonce ? nonce : "");
    char **sub = NULL, **unsub = NULL;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *irv = NULL;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry **irvp = NULL;
    if (nonce == NULL) {
        bool fresh = !t->requested;
        sub = calloc(t->n_names + 1, sizeof(*sub));
        unsub = calloc(t->n_sent + 1, sizeof(*unsub));
        if (sub == NULL || unsub == NULL)
            abort();
        for (size_t i = 0; i < t->n_names; i++) {
            if (fresh || !strv_has(t->sent, t->n_sent, t->names[i]))
                sub[rq.n_resource_names_subscribe++] = t->names[i];
        }
        for (size_t i = 0; !fresh && i < t->n_sent; i++) {
            if (!strv_has(t->names, t->n_names, t->sent[i]))
                unsub[rq.n_resource_names_unsubscribe++] = t->sent[i];
        }
        rq.resource_names_subscribe = sub;
        rq.resource_names_unsubscribe = unsub;
        if (fresh && t->n_held) {
            irv = calloc(t->n_held, sizeof(*irv));
            irvp = calloc(t->n_held, sizeof(*irvp));
            if (irv == NULL || irvp == NULL)
                abort();
            for (size_t i = 0; i < t->n_held; i++) {
                envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(
                    &irv[i]);
                irv[i].key = t->held[i].name;
                irv[i].value = t->held[i].version;
                irvp[i] = &irv[i];
            }
            rq.initial_resource_versions = irvp;
            rq.n_initial_resource_versions = t->n_held;
        }
    }
    if (error) {
        google__rpc__status__init(&st);
        st.code = NACK_CODE;
        st.message = (char *)error;
        rq.error_detail = &st;
    }
    send_msg(a, &rq.base);
    if (nonce == NULL) {
        free_strv(t->sent, t->n_sent);
        t->sent = dup_strv((const char *const *)t->names, t->n_names);
        t->n_sent = t->n_names;
        t->requested = true;
    }
    free(sub);
    free(unsub);
    free(irv);
    free(irvp);
}

static void send_subscription(xds_ads_t *a, ads_type_t *t)
{
    /* A named type nothing has asked for yet is not requested at all (an empty SotW request
     * for it would mean "unsubscribe" to istiod). */
    if (!t->wildcard && t->n_names == 0 && !t->requested)
        return;
    if (a->cfg.delta)
        send_delta(a, t, NULL, NULL);
    else
        send_sotw(a, t, t->nonce, NULL);
}

/* ---- delta bookkeeping: the versions held, for initial_resource_versions ---- */

static void held_set(ads_type_t *t, const char *name, const char *version)
{
    for (size_t i = 0; i < t->n_held; i++) {
        if (strcmp(t->held[i].name, name) == 0) {
            free(t->held[i].version);
            t->held[i].version = xstrdup(version);
            return;
        }
    }
    name_version_t *h = realloc(t->held, (t->n_held + 1) * sizeof(*h));
    if (h == NULL)
        abort();
    t->held = h;
    t->held[t->n_held++] = (name_version_t){xstrdup(name), xstrdup(version)};
}

static void held_remove(ads_type_t *t, const char *name)
{
    for (size_t i = 0; i < t->n_held; i++) {
        if (strcmp(t->held[i].name, name) == 0) {
            free(t->held[i].name);
            free(t->held[i].version);
            t->held[i] = t->held[--t->n_held];
            return;
        }
    }
}

/* ---- responses ---- */

static void handle_sotw(xds_ads_t *a, const uint8_t *data, size_t len)
{
    const char *why = NULL;
    Envoy__Service__Discovery__V3__DiscoveryResponse *r =
        (Envoy__Service__Discovery__V3__DiscoveryResponse *)xds_pb_unpack(
            &envoy__service__discovery__v3__discovery_response__descriptor, data, len, &why);
    if (r == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "ads: dropping an undecodable response: %s", why);
        return;
    }
    ads_type_t *t = find_type(a, r->type_url);
    if (t == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "ads: response for unsubscribed type %s ignored",
               r->type_url);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    xds_ads_resource_t *res = calloc(r->n_resources + 1, sizeof(*res));
    if (res == NULL)
        abort();
    for (size_t i = 0; i < r->n_resources; i++) {
        const Google__Protobuf__Any *any = r->resources[i];
        res[i] = (xds_ads_resource_t){
            .name = "",
            .version = "",
            .type_url = any->type_url,
            .data = any->value.data,
            .len = any->value.len,
        };
    }
    xds_ads_update_t u = {
        .type_url = t->type_url,
        .version_info = r->version_info,
        .nonce = r->nonce,
        .state_of_the_world = true,
        .resources = res,
        .n_resources = r->n_resources,
    };
    char *err = NULL;
    int rc = a->cb.on_update(a->userdata, &u, &err);
    free(t->nonce);
    t->nonce = xstrdup(r->nonce);
    if (rc == 0) {
        free(t->version);
        t->version = xstrdup(r->version_info);
        send_sotw(a, t, r->nonce, NULL);
    } else {
        send_sotw(a, t, r->nonce, err ? err : "rejected");
    }
    free(err);
    free(res);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void handle_delta(xds_ads_t *a, const uint8_t *data, size_t len)
{
    const char *why = NULL;
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *r =
        (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)xds_pb_unpack(
            &envoy__service__discovery__v3__delta_discovery_response__descriptor, data, len, &why);
    if (r == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "ads: dropping an undecodable delta response: %s",
               why);
        return;
    }
    ads_type_t *t = find_type(a, r->type_url);
    if (t == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "ads: delta response for unsubscribed type %s ignored",
               r->type_url);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    xds_ads_resource_t *res = calloc(r->n_resources + 1, sizeof(*res));
    if (res == NULL)
        abort();
    size_t n = 0;
    for (size_t i = 0; i < r->n_resources; i++) {
        const Envoy__Service__Discovery__V3__Resource *rs = r->resources[i];
        if (rs->resource == NULL)
            continue; /* a heartbeat or a name-only entry carries nothing to apply */
        res[n++] = (xds_ads_resource_t){
            .name = rs->name,
            .version = rs->version,
            .type_url = rs->resource->type_url,
            .data = rs->resource->value.data,
            .len = rs->resource->value.len,
        };
    }
    xds_ads_update_t u = {
        .type_url = t->type_url,
        .version_info = r->system_version_info,
        .nonce = r->nonce,
        .state_of_the_world = false,
        .resources = res,
        .n_resources = n,
        .removed = (const char *const *)r->removed_resources,
        .n_removed = r->n_removed_resources,
    };
    char *err = NULL;
    int rc = a->cb.on_update(a->userdata, &u, &err);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            held_set(t, res[i].name, res[i].version);
        for (size_t i = 0; i < r->n_removed_resources; i++)
            held_remove(t, r->removed_resources[i]);
        send_delta(a, t, r->nonce, NULL);
    } else {
        send_delta(a, t, r->nonce, err ? err : "rejected");
    }
    free(err);
    free(res);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ---- the stream ---- */

static void ads_connect(xds_ads_t *a);

static void on_stream_message(void *ud, const uint8_t *data, size_t len)
{
    xds_ads_t *a = ud;
    if (!a->connected) {
        a->connected = true;
        a->attempt = 0;
        DP_LOG(DP_LOG_CONFIG, DP_LOG_INFO, "ads: connected to %s", a->target);
        if (a->cb.on_connection)
            a->cb.on_connection(a->userdata, true);
    }
    if (a->cfg.delta)
        handle_delta(a, data, len);
    else
        handle_sotw(a, data, len);
}

static void on_retry(uv_timer_t *t)
{
    ads_connect(t->data);
}

static void on_stream_closed(void *ud, int status, const char *details)
{
    xds_ads_t *a = ud;
    bool was = a->connected;
    xds_grpc_stream_free(a->stream);
    a->stream = NULL;
    a->connected = false;
    /* Exponential back-off with full jitter between base and max (Envoy's
     * JitteredExponentialBackOffStrategy: 500 ms to 30 s by default). */
    unsigned base = a->cfg.backoff_base_ms ? a->cfg.backoff_base_ms : 500;
    unsigned max = a->cfg.backoff_max_ms ? a->cfg.backoff_max_ms : 30000;
    uint64_t ceiling = (uint64_t)base << (a->attempt < 16 ? a->attempt : 16);
    if (ceiling > max)
        ceiling = max;
    uint64_t delay = base + (uint64_t)rand() % (ceiling - base + 1);
    a->attempt++;
    DP_LOG(DP_LOG_CONFIG, was ? DP_LOG_WARN : DP_LOG_DEBUG,
           "ads: stream to %s closed (grpc status %d%s%s); retrying in %llu ms", a->target, status,
           details[0] ? ": " : "", details, (unsigned long long)delay);
    if (was && a->cb.on_connection)
        a->cb.on_connection(a->userdata, false);
    if (a->running)
        uv_timer_start(&a->retry, on_retry, delay, 0);
}

/* Reads the bearer token file into owned[3] (the access token), trimming the newline. */
static void ads_read_token(xds_ads_t *a)
{
    FILE *f = fopen(a->cfg.token_file, "r");
    if (f == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_WARN, "ads: cannot read token file %s", a->cfg.token_file);
        return;
    }
    char buf[16384];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    free(a->owned[3]);
    a->owned[3] = xstrdup(buf);
    a->cfg.target.access_token = a->owned[3];
}

static void ads_connect(xds_ads_t *a)
{
    if (a->cfg.token_file)
        ads_read_token(a);
    static const xds_grpc_stream_callbacks_t cb = {
        .on_message = on_stream_message,
        .on_closed = on_stream_closed,
    };
    const char *method = a->cfg.method ? a->cfg.method
                         : a->cfg.delta ? ADS_DELTA_METHOD
                                        : ADS_SOTW_METHOD;
    a->stream = xds_grpc_stream_open(a->loop, &a->cfg.target, method, &cb, a);
    if (a->stream == NULL) {
        DP_LOG(DP_LOG_CONFIG, DP_LOG_ERROR, "ads: cannot create a gRPC call to %s", a->target);
        uv_timer_start(&a->retry, on_retry, 1000, 0);
        return;
    }
    a->node_sent = false;
    for (size_t i = 0; i < a->n_types; i++) {
        a->types[i]->requested = false;
        send_subscription(a, a->types[i]);
    }
}

xds_ads_t *xds_ads_new(uv_loop_t *loop, const xds_ads_config_t *cfg,
                       const xds_ads_callbacks_t *cb, void *userdata)
{
    xds_ads_t *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->loop = loop;
    a->cfg = *cfg;
    a->cb = *cb;
    a->userdata = userdata;
    a->target = xstrdup(cfg->target.target);
    a->cfg.target.target = a->target;
    /* The TLS material and metadata are the caller's: keep copies. */
    a->owned[0] = cfg->target.root_certs ? xstrdup(cfg->target.root_certs) : NULL;
    a->owned[1] = cfg->target.cert_chain ? xstrdup(cfg->target.cert_chain) : NULL;
    a->owned[2] = cfg->target.private_key ? xstrdup(cfg->target.private_key) : NULL;
    a->owned[3] = cfg->target.access_token ? xstrdup(cfg->target.access_token) : NULL;
    a->cfg.target.root_certs = a->owned[0];
    a->cfg.target.cert_chain = a->owned[1];
    a->cfg.target.private_key = a->owned[2];
    a->cfg.target.access_token = a->owned[3];
    a->metadata = dup_strv(cfg->target.metadata, 2 * cfg->target.n_metadata);
    a->cfg.target.metadata = (const char *const *)a->metadata;
    a->method = cfg->method ? xstrdup(cfg->method) : NULL;
    a->cfg.method = a->method;
    a->token_file = cfg->token_file ? xstrdup(cfg->token_file) : NULL;
    a->cfg.token_file = a->token_file;
    a->node_msg = envoy__config__core__v3__node__unpack(NULL, cfg->node_len, cfg->node);
    if (a->node_msg == NULL) {
        free(a->target);
        free(a);
        return NULL;
    }
    a->cfg.node = NULL;
    uv_timer_init(loop, &a->retry);
    a->retry.data = a;
    return a;
}

void xds_ads_subscribe(xds_ads_t *a, const char *type_url, bool wildcard, const char *const *names,
                       size_t n_names)
{
    if (a == NULL)
        return; /* no ADS stream: the types come from files */
    ads_type_t *t = find_type(a, type_url);
    if (t == NULL) {
        ads_type_t **v = realloc(a->types, (a->n_types + 1) * sizeof(*v));
        t = calloc(1, sizeof(*t));
        if (v == NULL || t == NULL)
            abort();
        a->types = v;
        a->types[a->n_types++] = t;
        t->type_url = xstrdup(type_url);
    } else if (t->wildcard == wildcard && t->n_names == n_names) {
        bool same = true;
        for (size_t i = 0; i < n_names && same; i++)
            same = strv_has(t->names, t->n_names, names[i]);
        if (same)
            return;
    }
    free_strv(t->names, t->n_names);
    t->names = dup_strv(names, n_names);
    t->n_names = n_names;
    t->wildcard = wildcard;
    if (a->stream)
        send_subscription(a, t);
}

void xds_ads_set_token_file(xds_ads_t *a, const char *path)
{
    if (a == NULL)
        return;
    free(a->token_file);
    a->token_file = path ? xstrdup(path) : NULL;
    a->cfg.token_file = a->token_file;
}

void xds_ads_start(xds_ads_t *a)
{
    if (a == NULL)
        return;
    a->running = true;
    ads_connect(a);
}

bool xds_ads_connected(const xds_ads_t *a)
{
    return a && a->connected;
}

static void on_timer_closed(uv_handle_t *h)
{
    xds_ads_t *a = h->data;
    for (size_t i = 0; i < a->n_types; i++) {
        ads_type_t *t = a->types[i];
        free(t->type_url);
        free_strv(t->names, t->n_names);
        free_strv(t->sent, t->n_sent);
        free(t->version);
        free(t->nonce);
        for (size_t j = 0; j < t->n_held; j++) {
            free(t->held[j].name);
            free(t->held[j].version);
        }
        free(t->held);
        free(t);
    }
    free(a->types);
    free(a->target);
    free(a->method);
    free(a->token_file);
    for (size_t i = 0; i < 4; i++)
        free(a->owned[i]);
    free_strv(a->metadata, 2 * a->cfg.target.n_metadata);
    free(a);
}

void xds_ads_free(xds_ads_t *a)
{
    if (a == NULL)
        return;
    a->running = false;
    xds_grpc_stream_free(a->stream);
    a->stream = NULL;
    protobuf_c_message_free_unpacked(&a->node_msg->base, NULL);
    uv_close((uv_handle_t *)&a->retry, on_timer_closed);
}
