// Validates Kubernetes objects against real schemas; run by scripts/check-istio.py from the folder
// where `npm ci` installed this folder's package.json (target/check-istio):
//
//   node validate.mjs INPUT.json        INPUT: [{ "id": "...", "doc": { apiVersion, kind, ... } }]
//
// Prints { "<id>": ["error", ...] } as JSON. Two independent checks per object:
//
// * the schema as a validator: Istio's CRD openAPIV3Schema (@kubernetes-models/istio, generated
//   from Istio 1.29.2's crd-all.gen.yaml) or Kubernetes' OpenAPI schema (kubernetes-models),
//   compiled with ajv: types, enums, required fields, patterns, formats, ranges;
// * the same schema as TypeScript types, each object type-checked as an object literal with
//   `tsc --strict`: an unknown field anywhere (which the API server's strict field validation,
//   kubectl's default, refuses, but which a JSON Schema without additionalProperties lets
//   through) or a wrong type is an error; every object literal's keys are also compared with
//   the properties of its contextual type, so no unknown field hides behind another error.
//
// An object whose apiVersion/kind has no schema in either package is an error.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import ts from "typescript";

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const errors = Object.fromEntries(input.map(({ id }) => [id, []]));

function modulePath(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Z][A-Za-z0-9]*$/.test(kind)) {
    return null;
  }
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (!/^([a-z0-9-]+(\.[a-z0-9-]+)*)?$/.test(group) || !/^v[0-9]+((alpha|beta)[0-9]+)?$/.test(version)) {
    return null;
  }
  if (group.endsWith(".istio.io")) return `@kubernetes-models/istio/${group}/${version}/${kind}`;
  return `kubernetes-models/${group ? `${group}/` : ""}${version}/${kind}`;
}

// Writes `value` as a TypeScript literal, one member per line, each line with the JSON path it
// belongs to, so that a compiler error can name the field.
function emit(value, path, indent, prefix, suffix, out) {
  const pad = "  ".repeat(indent);
  const isObject = value !== null && typeof value === "object" && !Array.isArray(value);
  if (Array.isArray(value) && value.length > 0) {
    out.push([`${pad}${prefix}[`, path]);
    value.forEach((v, i) => emit(v, `${path}[${i}]`, indent + 1, "", ",", out));
    out.push([`${pad}]${suffix}`, path]);
  } else if (isObject && Object.keys(value).length > 0) {
    out.push([`${pad}${prefix}{`, path]);
    for (const [k, v] of Object.entries(value)) {
      emit(v, `${path}.${k}`, indent + 1, `${JSON.stringify(k)}: `, ",", out);
    }
    out.push([`${pad}}${suffix}`, path]);
  } else {
    const text = Array.isArray(value) ? "[]" : isObject ? "{}" : JSON.stringify(value);
    out.push([`${pad}${prefix}${text}${suffix}`, path]);
  }
}

const work = resolve("gen");
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

const files = new Map(); // file name -> { id, paths: [path per line] }
for (const [n, { id, doc }] of input.entries()) {
  const mod = modulePath(doc?.apiVersion, doc?.kind);
  if (!mod) {
    errors[id].push(`no schema for apiVersion ${JSON.stringify(doc?.apiVersion)} kind ${JSON.stringify(doc?.kind)}`);
    continue;
  }
  let Model;
  try {
    Model = (await import(mod))[doc.kind];
  } catch {
    Model = undefined;
  }
  if (typeof Model !== "function") {
    errors[id].push(`no schema for ${doc.apiVersion} ${doc.kind} (Istio 1.29 CRDs, Kubernetes API)`);
    continue;
  }
  // 1. The ajv validator of the schema.
  try {
    new Model(doc).validate();
  } catch (e) {
    const list = Array.isArray(e?.errors) ? e.errors : null;
    if (list) {
      for (const err of list) {
        const where = (err.instancePath || "").replace(/^\//, "").replaceAll("/", ".");
        errors[id].push(`schema: ${where || "(object)"}: ${err.message}${err.params?.allowedValues ? ` (${err.params.allowedValues.join(", ")})` : ""}`);
      }
    } else {
      errors[id].push(`schema: ${e?.message ?? e}`);
    }
  }
  // 2. The TypeScript types, as an object literal: excess-property and type checks.
  const out = [[`import type { I${doc.kind} } from ${JSON.stringify(mod)};`, ""]];
  emit(doc, "", 0, `export const doc: I${doc.kind} = `, ";", out);
  const file = join(work, `doc${n}.ts`);
  writeFileSync(file, out.map(([line]) => line).join("\n") + "\n");
  files.set(file, { id, paths: out.map(([, p]) => p) });
}

writeFileSync(join(work, "package.json"), JSON.stringify({ type: "module" }));
const program = ts.createProgram([...files.keys()], {
  strict: true,
  noEmit: true,
  skipLibCheck: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.NodeNext,
  moduleResolution: ts.ModuleResolutionKind.NodeNext,
  types: [],
});
for (const d of ts.getPreEmitDiagnostics(program)) {
  const entry = d.file ? files.get(resolve(d.file.fileName)) : undefined;
  const message = ts.flattenDiagnosticMessageText(d.messageText, " ");
  if (!entry) {
    // A diagnostic outside the generated files means the toolchain itself is broken.
    for (const id of Object.keys(errors)) errors[id].push(`typescript: ${message}`);
    continue;
  }
  const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
  const where = (entry.paths[line] ?? "").replace(/^\./, "");
  errors[entry.id].push(`types: ${where || "(object)"}: ${message}`);
}

// 3. Unknown fields once more, through the compiler's contextual types: tsc reports an object
// literal's excess properties only when the rest of it is assignable, so a typo beside a wrong
// type would otherwise show up only after that type is fixed.
const checker = program.getTypeChecker();
for (const [file, entry] of files) {
  const source = program.getSourceFile(file);
  const visit = (node) => {
    if (ts.isObjectLiteralExpression(node)) {
      const ctx = checker.getContextualType(node);
      const members = ctx ? (ctx.isUnion() ? ctx.types : [ctx]).filter((t) => t.flags & ts.TypeFlags.Object) : [];
      const open = members.length === 0 || members.some((t) =>
        checker.getIndexInfoOfType(t, ts.IndexKind.String) || checker.getPropertiesOfType(t).length === 0);
      if (!open) {
        for (const prop of node.properties) {
          const name = prop.name && ts.isStringLiteral(prop.name) ? prop.name.text : undefined;
          if (name !== undefined && !members.some((t) => checker.getPropertyOfType(t, name))) {
            const { line } = source.getLineAndCharacterOfPosition(prop.getStart(source));
            const where = (entry.paths[line] ?? "").replace(/^\./, "");
            const known = members.flatMap((t) => checker.getPropertiesOfType(t).map((p) => p.name));
            const message = `fields: ${where}: unknown field "${name}" (known: ${[...new Set(known)].sort().join(", ")})`;
            if (!errors[entry.id].some((e) => e.startsWith(`types: ${where}:`) && e.includes("known properties"))) {
              errors[entry.id].push(message);
            }
          }
        }
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
}

process.stdout.write(JSON.stringify(errors));
