// Log in with the master key: the gateway answers with the session cookie (HttpOnly) and its CSRF token.
const form = document.getElementById("login");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const response = await fetch("/ui/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ key: form.key.value }),
  });
  if (response.ok) {
    location.assign("/ui/");
    return;
  }
  const body = await response.json().catch(() => ({}));
  error.textContent = body.error?.message || `Login failed (HTTP ${response.status}).`;
  form.key.focus();
});
