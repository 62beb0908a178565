// The chatsite container app and the manual job that runs its migrations.
// Both run the same image with the same settings; secrets stay Container Apps secrets
// referenced by name, never plain environment values.
param name string
param migrateJobName string
param location string
param tags object = {}

@description('True once azd has deployed an image: re-provisioning keeps it instead of the placeholder.')
param exists bool

param containerAppsEnvironmentName string
param identityName string
param registryLoginServer string
param applicationInsightsName string

param postgresServerName string
param postgresDatabaseName string
param postgresAdminLogin string

@secure()
param postgresAdminPassword string

@secure()
param databaseUrl string

param redisName string

@secure()
param djangoSecretKey string

param additionalAllowedHosts string
param hstsSeconds int
param logLevel string

@description('Sign-in with Entra ID at the ingress; the app trusts its principal headers (AUTH_EASY_AUTH).')
param entraAuth bool
param entraClientId string

@secure()
param entraClientSecret string

param entraTenantId string
param entraStaffGroups string
param entraSuperuserGroups string
param requireSignIn bool

param chatBackend string
param aiProjectEndpoint string
param aiAgentId string
param aiAgentName string
param openAiBaseUrl string
param openAiModel string

param containerCpu string
param containerMemory string
param webConcurrency int
param minReplicas int
param maxReplicas int
param concurrentRequests int
param terminationGracePeriodSeconds int
param dbPoolMaxSize int

// Matches the Dockerfile: EXPOSE 8000 and uvicorn --port 8000.
var port = 8000
// After SIGTERM, replies get this long to finish before the app ends them cleanly
// (partial text stored, the browser told to retry). Then uvicorn's 90 s
// --timeout-graceful-shutdown, then SIGKILL at terminationGracePeriodSeconds.
var chatDrainSeconds = 60
// Until azd deploys the real image the app runs this placeholder, and `azd deploy`
// then swaps the image alone: the target port, the probes and the environment stay as
// provisioned here. So the placeholder answers the probes itself: it listens on $PORT,
// answers 200 on every path and shows only its host name, never its environment
// (which holds the app's secrets already).
var placeholderImage = 'us-docker.pkg.dev/google-samples/containers/gke/hello-app:1.0'

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' existing = {
  name: containerAppsEnvironmentName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' existing = {
  name: identityName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' existing = if (!empty(postgresServerName)) {
  name: postgresServerName
}

resource redisCluster 'Microsoft.Cache/redisEnterprise@2025-04-01' existing = if (!empty(redisName)) {
  name: redisName
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' existing = if (!empty(redisName)) {
  parent: redisCluster
  name: 'default'
}

resource existingApp 'Microsoft.App/containerApps@2024-03-01' existing = if (exists) {
  name: name
}

var image = exists ? existingApp.properties.template.containers[0].image : placeholderImage

// Host names: the app's own FQDN, any extra ones, and localhost for the health probes
// (they call the container directly; see the probes below). Envoy routes only the
// app's own host names to it, so allowing localhost lets nothing else in from outside.
var appFqdn = '${name}.${environment.properties.defaultDomain}'
var extraHosts = empty(additionalAllowedHosts) ? [] : split(replace(additionalAllowedHosts, ' ', ''), ',')
var allowedHosts = concat([
  appFqdn
], extraHosts, [
  'localhost'
])
// The loop runs over the parameter only: Bicep needs loop bodies it can evaluate before
// the deployment starts, and the FQDN is known only once the environment exists.
var extraOrigins = [for host in extraHosts: 'https://${host}']
var csrfTrustedOrigins = concat([
  'https://${appFqdn}'
], extraOrigins)

// The administrator password is generated alphanumeric, so it needs no URL escaping;
// the Redis key may hold '/', '+' and '=', so it is percent-encoded.
var resolvedDatabaseUrl = empty(postgresServerName) ? databaseUrl : 'postgres://${postgresAdminLogin}:${postgresAdminPassword}@${postgres.properties.fullyQualifiedDomainName}:5432/${postgresDatabaseName}?sslmode=require'
var redisUrl = empty(redisName) ? '' : 'rediss://:${uriComponent(redisDatabase.listKeys().primaryKey)}@${redisCluster.properties.hostName}:10000/0'

var baseSecrets = [
  {
    name: 'django-secret-key'
    value: djangoSecretKey
  }
  {
    name: 'appinsights-connection-string'
    value: applicationInsights.properties.ConnectionString
  }
]
var databaseSecrets = empty(resolvedDatabaseUrl) ? [] : [
  {
    name: 'database-url'
    value: resolvedDatabaseUrl
  }
]
var redisSecrets = empty(redisName) ? [] : [
  {
    name: 'redis-url'
    value: redisUrl
  }
]
var secrets = concat(baseSecrets, databaseSecrets, redisSecrets)
// The app's alone (the migrate job never signs anyone in), under the name that
// `az containerapp auth microsoft update` gives it.
var entraSecretName = 'microsoft-provider-authentication-secret'
var entraSecrets = entraAuth ? [
  {
    name: entraSecretName
    value: entraClientSecret
  }
] : []

var baseEnv = [
  {
    name: 'DJANGO_DEBUG'
    value: '0'
  }
  {
    name: 'DJANGO_SECRET_KEY'
    secretRef: 'django-secret-key'
  }
  {
    name: 'DJANGO_ALLOWED_HOSTS'
    value: join(allowedHosts, ',')
  }
  {
    name: 'CSRF_TRUSTED_ORIGINS'
    value: join(csrfTrustedOrigins, ',')
  }
  {
    name: 'DJANGO_HSTS_SECONDS'
    value: string(hstsSeconds)
  }
  {
    name: 'LOG_LEVEL'
    value: logLevel
  }
  {
    name: 'WEB_CONCURRENCY'
    value: string(webConcurrency)
  }
  {
    name: 'DB_POOL_MAX_SIZE'
    value: string(dbPoolMaxSize)
  }
  {
    name: 'CHAT_BACKEND'
    value: chatBackend
  }
  {
    name: 'CHAT_DRAIN_SECONDS'
    value: string(chatDrainSeconds)
  }
  {
    name: 'CHAT_REQUIRE_LOGIN'
    value: requireSignIn ? '1' : '0'
  }
  {
    name: 'AZURE_AI_CREDENTIAL'
    value: 'default'
  }
  {
    // DefaultAzureCredential picks the user-assigned identity by this client id.
    name: 'AZURE_CLIENT_ID'
    value: identity.properties.clientId
  }
  {
    name: 'AZURE_AI_PROJECT_ENDPOINT'
    value: aiProjectEndpoint
  }
  {
    name: 'AZURE_AI_AGENT_ID'
    value: aiAgentId
  }
  {
    name: 'AZURE_AI_AGENT_NAME'
    value: aiAgentName
  }
  {
    name: 'OPENAI_BASE_URL'
    value: openAiBaseUrl
  }
  {
    name: 'OPENAI_MODEL'
    value: openAiModel
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    secretRef: 'appinsights-connection-string'
  }
]
var databaseEnv = empty(resolvedDatabaseUrl) ? [] : [
  {
    name: 'DATABASE_URL'
    secretRef: 'database-url'
  }
]
var redisEnv = empty(redisName) ? [] : [
  {
    name: 'REDIS_URL'
    secretRef: 'redis-url'
  }
]
// The principal headers are trusted only with Container Apps authentication in front.
var entraEnv = entraAuth ? [
  {
    name: 'AUTH_EASY_AUTH'
    value: '1'
  }
  {
    name: 'AUTH_EASY_AUTH_TENANT_ID'
    value: entraTenantId
  }
  {
    name: 'AUTH_EASY_AUTH_STAFF_GROUPS'
    value: entraStaffGroups
  }
  {
    name: 'AUTH_EASY_AUTH_SUPERUSER_GROUPS'
    value: entraSuperuserGroups
  }
] : []
var placeholderEnv = exists ? [] : [
  {
    name: 'PORT'
    value: string(port)
  }
]
var env = concat(baseEnv, databaseEnv, redisEnv, entraEnv, placeholderEnv)

var registries = [
  {
    server: registryLoginServer
    identity: identity.id
  }
]

// Probes call the container directly with the pod address as Host, which Django would
// reject (DisallowedHost, 400). Sending Host: localhost, which DJANGO_ALLOWED_HOSTS
// lists, keeps the probes on the real request path.
var probeHeaders = [
  {
    name: 'Host'
    value: 'localhost'
  }
]

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'web'
  })
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: port
        // HTTP/1.1 to the container: uvicorn does not speak h2c. Browsers still get
        // HTTP/2 from the edge.
        transport: 'http'
        allowInsecure: false
        // A reconnecting EventSource returns to the replica that holds its stream.
        stickySessions: {
          affinity: 'sticky'
        }
      }
      registries: registries
      secrets: concat(secrets, entraSecrets)
    }
    template: {
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'web'
          image: image
          env: env
          resources: {
            cpu: json(containerCpu)
            memory: containerMemory
          }
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/api/health'
                port: port
                httpHeaders: probeHeaders
              }
              initialDelaySeconds: 3
              periodSeconds: 3
              timeoutSeconds: 3
              failureThreshold: 10
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/api/health'
                port: port
                httpHeaders: probeHeaders
              }
              periodSeconds: 10
              timeoutSeconds: 5
              failureThreshold: 3
            }
            {
              // Database, cache and chat settings: a replica that cannot serve gets no
              // traffic, and a broken release never replaces the running one.
              type: 'Readiness'
              httpGet: {
                path: '/api/health/ready'
                port: port
                httpHeaders: probeHeaders
              }
              periodSeconds: 10
              timeoutSeconds: 5
              failureThreshold: 3
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(concurrentRequests)
              }
            }
          }
        ]
      }
    }
  }
}

// Container Apps authentication: the ingress signs users in with Entra ID and passes
// each request's principal to the app in X-MS-CLIENT-PRINCIPAL headers, replacing any
// a client sent. Anonymous requests go through as well and the app decides: with
// CHAT_REQUIRE_LOGIN it sends the page to sign in and answers the API with 401 JSON,
// where the ingress could only redirect, or refuse, both alike.
var entraSignIn = {
  platform: {
    enabled: true
  }
  globalValidation: {
    unauthenticatedClientAction: 'AllowAnonymous'
    // Probes and uptime checks never sign in, should the action above change.
    excludedPaths: [
      '/api/health'
      '/api/health/ready'
    ]
  }
  identityProviders: {
    azureActiveDirectory: {
      enabled: true
      registration: {
        // One tenant's issuer: accounts of any other tenant cannot sign in.
        openIdIssuer: '${az.environment().authentication.loginEndpoint}${entraTenantId}/v2.0'
        clientId: entraClientId
        clientSecretSettingName: entraSecretName
      }
    }
  }
  httpSettings: {
    requireHttps: true
  }
}

// Deployed either way: a resource left out of a template stays as it was, so
// turning sign-in off would leave the ingress signing users in.
resource authConfig 'Microsoft.App/containerApps/authConfigs@2024-03-01' = {
  parent: app
  name: 'current'
  properties: entraAuth ? entraSignIn : {
    platform: {
      enabled: false
    }
  }
}

// Started once per deployment by infra/hooks/migrate.sh (azd postdeploy), which first
// points it at the image the app now runs.
resource migrateJob 'Microsoft.App/jobs@2024-03-01' = {
  name: migrateJobName
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    environmentId: environment.id
    configuration: {
      triggerType: 'Manual'
      replicaTimeout: 1800
      replicaRetryLimit: 0
      manualTriggerConfig: {
        parallelism: 1
        replicaCompletionCount: 1
      }
      registries: registries
      secrets: secrets
    }
    template: {
      containers: [
        {
          name: 'migrate'
          image: image
          command: [
            'python'
            'manage.py'
            'migrate'
            '--noinput'
          ]
          env: env
          resources: {
            cpu: json('0.5')
            memory: '1Gi'
          }
        }
      ]
    }
  }
}

output id string = app.id
output name string = app.name
output uri string = 'https://${app.properties.configuration.ingress.fqdn}'
output migrateJobName string = migrateJob.name
output aiProjectEndpoint string = aiProjectEndpoint
