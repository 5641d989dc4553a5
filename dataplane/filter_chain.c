#include "dataplane/filter_chain.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

/* The most chains one listener can have matched at once; Istio's biggest inbound listeners
 * have a few hundred. Past it, the matcher works on the first ones. */
#define MAX_CANDIDATES 4096

static const uint8_t *ip_bytes(const struct sockaddr *sa, int *family)
{
    if (sa == NULL)
        return NULL;
    *family = sa->sa_family;
    if (sa->sa_family == AF_INET)
        return (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (sa->sa_family == AF_INET6)
        return (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    return NULL;
}

static uint32_t ip_port(const struct sockaddr *sa)
{
    if (sa && sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa && sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

static bool prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;
    if (memcmp(a, b, bytes) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool dp_cidr_contains(const dp_cidr_t *c, const struct sockaddr *addr)
{
    int family = 0;
    const uint8_t *ip = ip_bytes(addr, &family);
    return ip && family == c->family && prefix_eq(c->addr, ip, c->len);
}

bool dp_cidr_parse(const char *address, uint32_t len, dp_cidr_t *out)
{
    memset(out, 0, sizeof(*out));
    unsigned max;
    if (inet_pton(AF_INET, address, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, address, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return false;
    }
    if (len > max)
        return false;
    out->len = (uint8_t)len;
    for (unsigned bit = len; bit < max; bit++)
        out->addr[bit / 8] &= (uint8_t) ~(0x80 >> (bit % 8));
    return true;
}

/* A score per candidate for one criterion: -1 no match, else higher is more specific. The
 * candidates left are those with the best score (when any is >= 0). */
typedef int (*score_fn)(const dp_fc_match_t *m, const dp_fc_input_t *in);

static size_t keep_best(const dp_filter_chain_t **cand, size_t n, score_fn score,
                        const dp_fc_input_t *in)
{
    int best = -1;
    int scores[MAX_CANDIDATES];
    for (size_t i = 0; i < n; i++) {
        scores[i] = score(&cand[i]->match, in);
        if (scores[i] > best)
            best = scores[i];
    }
    if (best < 0)
        return 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (scores[i] == best)
            cand[k++] = cand[i];
    }
    return k;
}

static int score_dst_port(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->destination_port == 0)
        return 0;
    uint32_t port = ip_port(in->local);
    return port != 0 && port == m->destination_port ? 1 : -1;
}

/* Longest prefix; no ranges is a /0 of either family (scored below every real prefix, as
 * Envoy's trie puts explicit ranges and the "any" entry at the same /0 level: both 0). */
static int score_prefixes(const dp_cidr_t *r, size_t n, const struct sockaddr *addr)
{
    if (n == 0)
        return 0;
    int best = -1;
    for (size_t i = 0; i < n; i++) {
        if (dp_cidr_contains(&r[i], addr) && r[i].len > best)
            best = r[i].len;
    }
    return best;
}

static int score_dst_ip(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    return score_prefixes(m->prefix_ranges, m->n_prefix_ranges, in->local);
}

static int score_direct_src_ip(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    return score_prefixes(m->direct_source_prefix_ranges, m->n_direct_source_prefix_ranges,
                          in->direct_remote ? in->direct_remote : in->remote);
}

static int score_src_ip(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    return score_prefixes(m->source_prefix_ranges, m->n_source_prefix_ranges, in->remote);
}

/* Exact name: 1 + 256 (above every wildcard); "*.suffix": 1 + the suffix length (longer is
 * more specific); no server_names: 0. */
static int score_server_name(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->n_server_names == 0)
        return 0;
    const char *sni = in->server_name ? in->server_name : "";
    size_t len = strlen(sni);
    if (len == 0)
        return -1;
    int best = -1;
    for (size_t i = 0; i < m->n_server_names; i++) {
        const char *name = m->server_names[i];
        if (strcasecmp(name, sni) == 0)
            return 1 + 256;
        /* "*.example.com" matches "www.example.com" and "a.b.example.com", not
         * "example.com"; Envoy tries the suffixes after each dot but the first character. */
        if (name[0] == '*' && name[1] == '.') {
            size_t sl = strlen(name + 1); /* ".example.com" */
            if (len > sl && strcasecmp(sni + len - sl, name + 1) == 0 && (int)sl + 1 > best)
                best = (int)sl + 1;
        }
    }
    return best;
}

static int score_transport(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->transport_protocol == NULL || m->transport_protocol[0] == '\0')
        return 0;
    const char *tp = in->transport_protocol ? in->transport_protocol : "raw_buffer";
    return strcmp(tp, m->transport_protocol) == 0 ? 1 : -1;
}

/* The first offered protocol that any chain lists decides: chains listing an earlier offered
 * protocol score higher. */
static int score_alpn(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->n_application_protocols == 0)
        return 0;
    for (size_t k = 0; k < in->n_alpn; k++) {
        for (size_t i = 0; i < m->n_application_protocols; i++) {
            if (strcmp(m->application_protocols[i], in->alpn[k]) == 0)
                return (int)(in->n_alpn - k);
        }
    }
    return -1;
}

static bool same_ip_or_loopback(const dp_fc_input_t *in)
{
    int fr = 0, fl = 0;
    const uint8_t *r = ip_bytes(in->remote, &fr), *l = ip_bytes(in->local, &fl);
    if (r == NULL)
        return false;
    if (fr == AF_INET && r[0] == 127)
        return true;
    if (fr == AF_INET6) {
        static const uint8_t lo6[16] = {[15] = 1};
        if (memcmp(r, lo6, 16) == 0)
            return true;
    }
    return l && fl == fr && memcmp(r, l, fr == AF_INET ? 4 : 16) == 0;
}

static int score_source_type(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->source_type == DP_SOURCE_ANY)
        return 0;
    bool local = same_ip_or_loopback(in);
    if (m->source_type == DP_SOURCE_SAME_IP_OR_LOOPBACK)
        return local ? 1 : -1;
    return local ? -1 : 1;
}

static int score_src_port(const dp_fc_match_t *m, const dp_fc_input_t *in)
{
    if (m->n_source_ports == 0)
        return 0;
    uint32_t port = ip_port(in->remote);
    for (size_t i = 0; i < m->n_source_ports; i++) {
        if (m->source_ports[i] == port)
            return 1;
    }
    return -1;
}

const dp_filter_chain_t *dp_filter_chain_select(const dp_listener_t *l, const dp_fc_input_t *in)
{
    static const score_fn steps[] = {
        score_dst_port,      score_dst_ip,      score_server_name, score_transport, score_alpn,
        score_direct_src_ip, score_source_type, score_src_ip,      score_src_port,
    };
    const dp_filter_chain_t *cand[MAX_CANDIDATES];
    size_t n = l->n_chains < MAX_CANDIDATES ? l->n_chains : MAX_CANDIDATES;
    for (size_t i = 0; i < n; i++)
        cand[i] = &l->chains[i];
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]) && n > 0; s++)
        n = keep_best(cand, n, steps[s], in);
    return n > 0 ? cand[0] : l->default_chain;
}

/* ---- overlap (duplicate matching rules) ---- */

static bool strs_meet(const char *const *a, size_t na, const char *const *b, size_t nb)
{
    if (na == 0 || nb == 0)
        return na == nb;
    for (size_t i = 0; i < na; i++) {
        for (size_t j = 0; j < nb; j++) {
            if (strcasecmp(a[i], b[j]) == 0)
                return true;
        }
    }
    return false;
}

static bool cidrs_meet(const dp_cidr_t *a, size_t na, const dp_cidr_t *b, size_t nb)
{
    if (na == 0 || nb == 0)
        return na == nb;
    for (size_t i = 0; i < na; i++) {
        for (size_t j = 0; j < nb; j++) {
            if (a[i].family == b[j].family && a[i].len == b[j].len &&
                memcmp(a[i].addr, b[j].addr, 16) == 0)
                return true;
        }
    }
    return false;
}

static bool ports_meet(const uint32_t *a, size_t na, const uint32_t *b, size_t nb)
{
    if (na == 0 || nb == 0)
        return na == nb;
    for (size_t i = 0; i < na; i++) {
        for (size_t j = 0; j < nb; j++) {
            if (a[i] == b[j])
                return true;
        }
    }
    return false;
}

bool dp_fc_match_overlaps(const dp_fc_match_t *a, const dp_fc_match_t *b)
{
    const char *ta = a->transport_protocol ? a->transport_protocol : "";
    const char *tb = b->transport_protocol ? b->transport_protocol : "";
    return a->destination_port == b->destination_port &&
           cidrs_meet(a->prefix_ranges, a->n_prefix_ranges, b->prefix_ranges, b->n_prefix_ranges) &&
           strs_meet(a->server_names, a->n_server_names, b->server_names, b->n_server_names) &&
           strcmp(ta, tb) == 0 &&
           strs_meet(a->application_protocols, a->n_application_protocols, b->application_protocols,
                     b->n_application_protocols) &&
           cidrs_meet(a->direct_source_prefix_ranges, a->n_direct_source_prefix_ranges,
                      b->direct_source_prefix_ranges, b->n_direct_source_prefix_ranges) &&
           a->source_type == b->source_type &&
           cidrs_meet(a->source_prefix_ranges, a->n_source_prefix_ranges, b->source_prefix_ranges,
                      b->n_source_prefix_ranges) &&
           ports_meet(a->source_ports, a->n_source_ports, b->source_ports, b->n_source_ports);
}
