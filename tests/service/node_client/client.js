// Talks to `tessera serve` with @grpc/grpc-js, loading tessera/v1/tessera.proto at run time.
// usage: node client.js HOST:PORT PROTO_ROOT COLLECTION QUERY   (prints one JSON object)
'use strict';
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [target, protoRoot, collection, query] = process.argv.slice(2);
const definition = protoLoader.loadSync('tessera/v1/tessera.proto', {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const tessera = grpc.loadPackageDefinition(definition).tessera.v1;
const client = new tessera.Tessera(target, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
if (process.env.TESSERA_API_KEY) metadata.add('authorization', `Bearer ${process.env.TESSERA_API_KEY}`);
const deadline = () => ({ deadline: Date.now() + 30000 });

function call(method, request) {
  return new Promise((resolve) => {
    client[method](request, metadata, deadline(), (err, response) =>
      resolve(err ? { error: { code: grpc.status[err.code], details: err.details } } : response));
  });
}

(async () => {
  const out = {};
  out.collections = (await call('ListCollections', {})).collections.map((c) => c.name);
  out.search = await call('Search', {
    collection,
    query: { text: query },
    options: { k: 5, method: 'plaid', fields: ['text', 'metadata'] },
  });
  out.filtered = await call('Search', {
    collection,
    query: { text: query },
    options: { k: 5, method: 'exact', filter: { eq: { field: 'lang', value: { string_value: 'en' } } } },
  });
  out.bad_k = await call('Search', { collection, query: { text: query }, options: { k: 0 } });
  out.unknown = await call('Search', { collection: 'nope', query: { text: query } });
  client.close();
  process.stdout.write(JSON.stringify(out) + '\n');
})();
