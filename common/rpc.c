/* Request/answer over nng (see rpc.h). */
#include "rpc.h"

#include <stdio.h>

ProtobufCMessage *rpc_call(nng_socket sock, nng_aio *caller_aio, const ProtobufCMessage *req,
                           const ProtobufCMessageDescriptor *answer, int timeout_ms, const char *peer, char *err,
                           size_t errlen) {
    nng_ctx ctx;
    nng_aio *aio = caller_aio;
    nng_msg *m = NULL;
    int rv;
    if ((rv = nng_ctx_open(&ctx, sock))) {
        snprintf(err, errlen, "%s: %s", peer, nng_strerror(rv));
        return NULL;
    }
    if ((!aio && (rv = nng_aio_alloc(&aio, NULL, NULL))) ||
        (rv = nng_msg_alloc(&m, protobuf_c_message_get_packed_size(req)))) {
        snprintf(err, errlen, "%s: %s", peer, nng_strerror(rv));
        goto fail;
    }
    protobuf_c_message_pack(req, nng_msg_body(m));
    nng_aio_set_timeout(aio, timeout_ms);
    nng_aio_set_msg(aio, m);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) {
        nng_msg_free(m);
        snprintf(err, errlen, "%s: send: %s", peer, nng_strerror(rv));
        goto fail;
    }
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio))) {
        snprintf(err, errlen, "%s: %s", peer, rv == NNG_ETIMEDOUT ? "not answering" : nng_strerror(rv));
        goto fail;
    }
    m = nng_aio_get_msg(aio);
    ProtobufCMessage *r = protobuf_c_message_unpack(answer, NULL, nng_msg_len(m), nng_msg_body(m));
    nng_msg_free(m);
    if (!r)
        snprintf(err, errlen, "%s: malformed answer", peer);
    if (aio != caller_aio)
        nng_aio_free(aio);
    nng_ctx_close(ctx);
    return r;
fail:
    if (aio && aio != caller_aio)
        nng_aio_free(aio);
    nng_ctx_close(ctx);
    return NULL;
}
