/* Version of the messages in proto/inferno.proto. A peer that sends another
 * version is answered with ERROR_VERSION; bump this on any incompatible
 * change. */
#ifndef INFERNO_PROTOCOL_H
#define INFERNO_PROTOCOL_H

#define INFERNO_PROTOCOL_VERSION 2 /* 2: pipelined steps (a StepSequence token of -1) */

/* A StepSequence token that the step before it samples: the worker puts
 * there the token it drew for the sequence (pipelined steps). */
#define INFERNO_TOKEN_PENDING (-1)

/* Largest message any inferno socket accepts. */
#define INFERNO_MAX_MESSAGE_BYTES (16u << 20)

#endif
