/* The HTTP seam over esp_http_client: one connection per request, every request bounded by its
 * timeout, the response body into a bounded buffer or streamed to a sink. The Authorization
 * header is never logged (esp_http_client does not log request headers above debug, and this
 * file logs none). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "esp_http_client.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm.http";

/* esp_http_client hands each response header to the event handler. */
static esp_err_t on_event(esp_http_client_event_t *ev)
{
    mdm_http_resp_t *resp = ev->user_data;
    if (ev->event_id != HTTP_EVENT_ON_HEADER || resp == NULL || ev->header_key == NULL || ev->header_value == NULL) {
        return ESP_OK;
    }
    if (strcasecmp(ev->header_key, "ETag") == 0) {
        mdm_copy(resp->etag, sizeof(resp->etag), ev->header_value);
    } else if (strcasecmp(ev->header_key, "Content-Range") == 0) {
        mdm_copy(resp->content_range, sizeof(resp->content_range), ev->header_value);
    } else if (strcasecmp(ev->header_key, "Retry-After") == 0) {
        char *end = NULL;
        unsigned long s = strtoul(ev->header_value, &end, 10);
        if (end != ev->header_value && s < 86400) {
            resp->retry_after_s = (uint32_t)s;
        }
    }
    return ESP_OK;
}

static esp_err_t write_all(esp_http_client_handle_t c, const char *data, size_t len)
{
    while (len > 0) {
        int n = esp_http_client_write(c, data, (int)len);
        if (n <= 0) {
            return ESP_ERR_HTTP_WRITE_DATA;
        }
        data += n;
        len -= (size_t)n;
    }
    return ESP_OK;
}

static esp_err_t send_body(esp_http_client_handle_t c, const mdm_http_req_t *req)
{
    if (req->body != NULL) {
        return write_all(c, req->body, req->body_len);
    }
    if (req->source == NULL) {
        return ESP_OK;
    }
    uint8_t piece[512];
    size_t sent = 0;
    while (sent < req->source_len) {
        size_t want = req->source_len - sent < sizeof(piece) ? req->source_len - sent : sizeof(piece);
        int n = req->source(req->source_ctx, piece, want);
        if (n <= 0) {
            return n == 0 ? ESP_ERR_INVALID_SIZE : ESP_FAIL;
        }
        esp_err_t err = write_all(c, (const char *)piece, (size_t)n);
        if (err != ESP_OK) {
            return err;
        }
        sent += (size_t)n;
    }
    return ESP_OK;
}

/* Reads the body into req->buf (bounded) or through req->sink. */
static esp_err_t read_body(esp_http_client_handle_t c, const mdm_http_req_t *req, mdm_http_resp_t *resp)
{
    for (;;) {
        char *dst;
        int room;
        if (req->sink != NULL) {
            dst = req->buf;
            room = (int)req->cap;
        } else {
            if (resp->len + 1 >= req->cap) {
                /* Full: one more byte tells whether the body is longer than allowed. */
                char extra;
                int n = esp_http_client_read(c, &extra, 1);
                if (n > 0) {
                    resp->too_long = true;
                }
                return n < 0 ? ESP_ERR_HTTP_READ_TIMEOUT : ESP_OK;
            }
            dst = req->buf + resp->len;
            room = (int)(req->cap - 1 - resp->len);
        }
        int n = esp_http_client_read(c, dst, room);
        if (n < 0) {
            return n == -ESP_ERR_HTTP_EAGAIN ? ESP_ERR_HTTP_READ_TIMEOUT : ESP_ERR_HTTP_INCOMPLETE_DATA;
        }
        if (n == 0) {
            break;
        }
        if (req->sink != NULL) {
            esp_err_t err = req->sink(req->sink_ctx, (const uint8_t *)dst, (size_t)n);
            if (err != ESP_OK) {
                return err;
            }
        } else {
            req->buf[resp->len + (size_t)n] = '\0';
        }
        resp->len += (size_t)n;
    }
    if (!esp_http_client_is_complete_data_received(c) ||
        (resp->content_length >= 0 && (int64_t)resp->len < resp->content_length)) {
        return ESP_ERR_HTTP_INCOMPLETE_DATA; /* the connection was cut mid-body */
    }
    return ESP_OK;
}

esp_err_t mdm_http_esp(void *vctx, const mdm_http_req_t *req, mdm_http_resp_t *resp)
{
    const mdm_http_esp_ctx_t *ctx = vctx;
    memset(resp, 0, sizeof(*resp));
    resp->content_length = -1;
    if (req->buf != NULL && req->cap > 0 && req->sink == NULL) {
        req->buf[0] = '\0';
    }
    esp_http_client_config_t cfg = {
        .url = req->url,
        .method = strcmp(req->method, "POST") == 0 ? HTTP_METHOD_POST : HTTP_METHOD_GET,
        .timeout_ms = (int)req->timeout_ms,
        .disable_auto_redirect = true,
        .max_authorization_retries = -1,
        .event_handler = on_event,
        .user_data = resp,
        .buffer_size = 2048,
        .buffer_size_tx = 3072, /* the bearer token travels in a header */
        .cert_pem = ctx != NULL ? ctx->cert_pem : NULL,
        .crt_bundle_attach = ctx != NULL ? ctx->crt_bundle_attach : NULL,
    };
    esp_http_client_handle_t c = esp_http_client_init(&cfg);
    if (c == NULL) {
        return ESP_ERR_NO_MEM;
    }
    esp_err_t err = ESP_OK;
    char *auth = NULL;
    if (req->bearer != NULL) {
        size_t n = strlen(req->bearer) + sizeof("Bearer ");
        auth = malloc(n);
        if (auth == NULL) {
            err = ESP_ERR_NO_MEM;
            goto out;
        }
        mdm_fmt(auth, n, "Bearer %s", req->bearer);
        err = esp_http_client_set_header(c, "Authorization", auth);
    }
    if (err == ESP_OK && req->content_type != NULL) {
        err = esp_http_client_set_header(c, "Content-Type", req->content_type);
    }
    if (err == ESP_OK && req->range != NULL) {
        err = esp_http_client_set_header(c, "Range", req->range);
    }
    if (err == ESP_OK && req->if_range != NULL) {
        err = esp_http_client_set_header(c, "If-Range", req->if_range);
    }
    if (err != ESP_OK) {
        goto out;
    }
    size_t body_len = req->body != NULL ? req->body_len : (req->source != NULL ? req->source_len : 0);
    err = esp_http_client_open(c, (int)body_len);
    if (err != ESP_OK) {
        goto out;
    }
    err = send_body(c, req);
    if (err != ESP_OK) {
        goto out;
    }
    int64_t cl = esp_http_client_fetch_headers(c);
    if (cl < 0) {
        err = ESP_ERR_HTTP_FETCH_HEADER;
        goto out;
    }
    resp->status = esp_http_client_get_status_code(c);
    resp->content_length = esp_http_client_is_chunked_response(c) ? -1 : cl;
    if (req->buf != NULL && req->cap > 0) {
        err = read_body(c, req, resp);
    }
out:
    if (auth != NULL) {
        mdm_wipe(auth, strlen(auth));
        free(auth);
    }
    esp_http_client_close(c);
    esp_http_client_cleanup(c);
    if (err != ESP_OK) {
        ESP_LOGD(TAG, "%s %s: %s", req->method, req->url, esp_err_to_name(err));
    }
    return err;
}
