/* One protobuf request and its answer over an nng REQ socket, on a context
 * of its own, so any number of threads may call at once. The clients of
 * scheduler-svc and tokenizer-svc are built on it. */
#ifndef INFERNO_RPC_H
#define INFERNO_RPC_H

#include <nng/nng.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

/* Sends req and returns the answer unpacked as `answer` (free it with
 * protobuf_c_message_free_unpacked), or NULL with err starting with peer:
 * not sent, no answer within timeout_ms, or an answer that does not parse.
 * aio: the caller's own (so another thread may nng_aio_cancel a call in
 * flight, which must happen before the socket closes), or NULL. */
ProtobufCMessage *rpc_call(nng_socket sock, nng_aio *aio, const ProtobufCMessage *req,
                           const ProtobufCMessageDescriptor *answer, int timeout_ms, const char *peer, char *err,
                           size_t errlen);

#endif
