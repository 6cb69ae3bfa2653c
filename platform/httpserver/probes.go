package httpserver

import "net/http"

// Health is the answer of GET /healthz.
type Health struct {
	Status string `json:"status" example:"ok"`
}

// Readiness is the answer of GET /readyz when every dependency is usable.
type Readiness struct {
	Status string `json:"status" example:"ready"`
	// Checks maps each readiness check to "ok" (or "down: reason" in the 503 answer's errors).
	Checks map[string]string `json:"checks" example:"database:ok,broker:ok"`
}

// healthz godoc
//
//	@Summary		Liveness probe
//	@ID				healthz
//	@Description	Answers 200 while the process runs; it checks no dependency.
//	@Tags			operations
//	@Produce		json
//	@Success		200	{object}	Health
//	@Router			/healthz [get]
func healthz(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, Health{Status: "ok"})
}
