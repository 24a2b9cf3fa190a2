//! The OpenAPI 3.1 document of `/api/v1`: its description, the bearer-key security scheme, and
//! the conventions every operation shares, applied once over the operations the handlers
//! declare.

use utoipa::OpenApi;

use super::extract::ProblemDoc;
use super::referrals::CURSOR_PATTERN;

/// The document's description and shared schemas; the routes add their operations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "referral-relay point-of-service API",
        description = "Read the Ocean eReferrals the relay stored, follow its event feed, and send updates back to Ocean."
    ),
    components(schemas(ProblemDoc))
)]
pub struct ApiDoc;

/// Finishes the document the routes built: security and the shared conventions.
pub fn finish(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::Modify;
    BearerKey.modify(openapi);
    Conventions.modify(openapi);
}

/// The API's shared vocabulary, applied to every operation so the document says exactly what
/// the handlers accept and answer: one schema per parameter name, and the problem answers
/// every operation can give (each handler's annotation lists only its own successes and
/// particular refusals).
struct Conventions;

/// What an identifier (a referral reference, an External Service ID) may be: after trimming,
/// 1 to 256 characters, none of them a control character.
const IDENTIFIER_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$";

impl Conventions {
    /// The schema of a parameter of this name, wherever it appears.
    fn parameter(name: &str) -> Option<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{
            AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        // No upper bound: a page size or wait beyond its cap is capped, a position beyond
        // the end finds nothing.
        let integer = |minimum: u64| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(minimum))
                .build()
        };
        let string = |format: KnownFormat| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
                .build()
        };
        Some(match name {
            "referral" | "service_id" => ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(256))
                .pattern(Some(IDENTIFIER_PATTERN))
                .into(),
            "version" | "id" => integer(1).into(),
            "name" => ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[a-z0-9_-]{1,64}$"))
                .into(),
            "index" => integer(0).into(),
            "after" | "wait" => integer(0).into(),
            "limit" => integer(1).into(),
            "modified_since" | "from" | "to" => AnyOfBuilder::new()
                .item(string(KnownFormat::Date))
                .item(string(KnownFormat::DateTime))
                .into(),
            "cursor" => ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(CURSOR_PATTERN))
                .into(),
            "state" => ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["pending", "delivered", "dead", "discarded"]))
                .into(),
            "unexported_only" | "mark_exported" | "excel" => {
                ObjectBuilder::new().schema_type(Type::Boolean).into()
            }
            _ => return None,
        })
    }

    fn problem(description: &str) -> utoipa::openapi::Response {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ProblemDoc")))
                    .build(),
            )
            .build()
    }
}

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                let names: Vec<String> = operation
                    .parameters
                    .iter()
                    .flatten()
                    .map(|p| p.name.clone())
                    .collect();
                for parameter in operation.parameters.iter_mut().flatten() {
                    if let Some(schema) = Self::parameter(&parameter.name) {
                        parameter.schema = Some(schema.into());
                    }
                }
                if path == "/api/v1/openapi.json" {
                    // Served to anyone: no key needed to learn the API.
                    operation.security = Some(Vec::new());
                    continue;
                }
                let mut add = |status: &str, description: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| Self::problem(description).into());
                };
                if !names.is_empty() || operation.request_body.is_some() {
                    add(
                        "400",
                        "A parameter or the body is invalid; the detail names it",
                    );
                }
                add("401", "No API key, or an unknown one");
                if names
                    .iter()
                    .any(|n| matches!(n.as_str(), "referral" | "id" | "service_id"))
                {
                    add("403", "Outside the client's service ids");
                }
                if names
                    .iter()
                    .any(|n| matches!(n.as_str(), "referral" | "id"))
                {
                    add("404", "No such referral, version or update");
                }
                add(
                    "503",
                    "The store cannot be read or written now; retry later",
                );
            }
        }
    }
}

/// Declares the bearer-key security scheme every operation uses.
struct BearerKey;

impl utoipa::Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "api_key",
            Vec::<String>::new(),
        )]);
    }
}
