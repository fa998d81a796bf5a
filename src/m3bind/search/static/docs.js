// Renders the server's OpenAPI description as a plain list of routes: no CDN, works offline.
"use strict";

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `${schemaName(schema.items)}[]`;
  if (schema.anyOf) return schema.anyOf.map(schemaName).join(" | ");
  return schema.type || "";
}

function describeSchema(spec, name) {
  const schema = spec.components && spec.components.schemas && spec.components.schemas[name];
  if (!schema || !schema.properties) return null;
  const list = element("ul", "meta");
  for (const [field, property] of Object.entries(schema.properties)) {
    const required = (schema.required || []).includes(field) ? " (required)" : "";
    const about = property.description ? ` – ${property.description}` : "";
    list.append(element("li", "", `${field}: ${schemaName(property)}${required}${about}`));
  }
  return list;
}

async function start() {
  const spec = await (await fetch("/openapi.json")).json();
  const main = document.getElementById("routes");
  main.append(element("p", "", spec.info.description || ""));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const section = element("section", "group");
      section.append(element("h2", "", `${method.toUpperCase()} ${path}`));
      section.append(element("p", "", operation.description || operation.summary || ""));
      for (const parameter of operation.parameters || []) {
        section.append(element("p", "meta", `${parameter.in} parameter ${parameter.name}: ${schemaName(parameter.schema)}`));
      }
      const content = operation.requestBody && operation.requestBody.content;
      if (content) {
        for (const [type, body] of Object.entries(content)) {
          const name = schemaName(body.schema);
          section.append(element("p", "meta", `body (${type}): ${name}`));
          const fields = describeSchema(spec, name);
          if (fields) section.append(fields);
        }
      }
      const codes = Object.keys(operation.responses || {}).join(", ");
      section.append(element("p", "meta", `responses: ${codes}`));
      main.append(section);
    }
  }
}

start().catch((error) => { document.getElementById("status").textContent = `cannot load /openapi.json: ${error.message}`; });
