// A yaie.v1.Generation client written from protos/yaie/v1/generation.proto alone.
//
// usage: node client.js HOST:PORT "prompt" MAX_NEW_TOKENS
// Prints GetModelInfo as one JSON line, then one JSON line per Generate frame (greedy).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'protos', 'yaie', 'v1', 'generation.proto');

function main([target, prompt, maxNewTokens]) {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  });
  const { Generation } = grpc.loadPackageDefinition(definition).yaie.v1;
  const client = new Generation(target, grpc.credentials.createInsecure());
  client.GetModelInfo({}, (error, info) => {
    if (error) {
      console.error(`GetModelInfo failed: ${error.code} ${error.details}`);
      process.exit(1);
    }
    console.log(JSON.stringify(info));
    const request = {
      text: prompt,
      sampling: { temperature: 0 },
      stopping: { max_new_tokens: Number(maxNewTokens) },
    };
    const call = client.Generate(request, { deadline: Date.now() + 60000 });
    call.on('data', (frame) => {
      console.log(JSON.stringify({
        token_ids: frame.token_ids, text: frame.text, finish_reason: frame.finish_reason,
        completion_tokens: frame.usage.completion_tokens,
      }));
    });
    call.on('error', (err) => {
      console.error(`Generate failed: ${err.code} ${err.details}`);
      process.exit(1);
    });
    call.on('end', () => client.close());
  });
}

main(process.argv.slice(2));
