// Swagger UI for this service: the spec comes from the same server (./doc.json) and names no host, so
// "Try it out" sends its requests to the server that served this page. Nothing is fetched from elsewhere:
// validatorUrl null keeps the UI from calling the public validator.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "./doc.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 1,
    displayRequestDuration: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout",
  });
};
